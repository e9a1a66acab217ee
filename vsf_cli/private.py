"""The private diffusers and torch names vsf relies on, in one place, so that a rename fails one test, not users.

- `diffusers.hooks.hooks.StateManager._context`: the cache context ("cond"/"uncond") a stateful hook sees; how
  guidance tells a CFG unconditional pass from the conditional one.
- `DiffusionPipeline._execution_device`: where the pipeline runs its text encoders (offload-aware).
- `diffusers.pipelines.wan.pipeline_wan.prompt_clean`: Wan's own prompt cleaning, applied to negatives too.
- `torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`, `..._flash_attention`,
  `..._efficient_attention`: fused attention that also returns the log-sum-exp (guidance/attention.py).
"""

NAMES = (
    ("diffusers.hooks.hooks", "StateManager", "_context"),
    ("diffusers.pipelines.pipeline_utils", "DiffusionPipeline", "_execution_device"),
    ("diffusers.pipelines.wan.pipeline_wan", "prompt_clean"),
    ("torch", "ops", "aten", "_scaled_dot_product_flash_attention_for_cpu"),
    ("torch", "ops", "aten", "_scaled_dot_product_flash_attention"),
    ("torch", "ops", "aten", "_scaled_dot_product_efficient_attention"),
)


def cache_context(state_manager):
    """The cache context a diffusers StateManager was last given, or None outside any."""
    return state_manager._context


def execution_device(pipe):
    return pipe._execution_device
