"""NASA (SNOOPI, Nguyen et al. 2024): subtract the negative's image attention, Z = Z+ - s Z-, no normalisation."""

from pydantic import Field

from vsf_cli.guidance.base import AttentionMethod


class NASA(AttentionMethod):
    """NASA as the VSF authors reimplemented it: NAG's SD3 layout with a plain subtraction (docs/method.md §6.2)."""

    nasa_scale: float = Field(0.22, ge=0.0, le=5.0, description="subtraction scale s; 0 = off")

    def kernel(self):
        from vsf_cli.guidance.attention import contrast_joint

        def kernel(image, positive, negative, **masks):
            z_pos, pos_out, z_neg, neg_out = contrast_joint(image, positive, negative, **masks)
            return z_pos - self.nasa_scale * z_neg, pos_out, neg_out

        return kernel

    def cross_kernel(self):
        from vsf_cli.guidance.attention import contrast_cross

        def kernel(query, positive, negative, negative_mask=None):
            z_pos, z_neg = contrast_cross(query, positive, negative, negative_mask=negative_mask)
            return z_pos - self.nasa_scale * z_neg

        return kernel

    def options(self) -> dict:
        return {"padded": True}
