"""The shipped toy models (SD3 `toy`, Z-Image `toy-z`): world, judge, text path, rendering, VSF's measured effect,
and training smoke runs."""

import random

import numpy as np
import pytest
import torch

from vsf_cli.toy import TOYS, bench, detector, text, world

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(2)
    return bench.load()


@pytest.fixture(scope="module")
def toy_z():
    torch.set_num_threads(2)
    return bench.load("toy-z")


@pytest.fixture(scope="module", params=["toy", "toy-z"])
def either(request):
    return request.getfixturevalue(request.param.replace("-", "_"))


def test_judge_reads_fresh_renders_exactly():
    acc = detector.accuracy(n=400, seed=777)
    assert acc["all"] >= 0.98, acc


def test_benchmark_prompts_are_not_training_captions():
    rng = random.Random(3)
    captions = {world.sample(rng)[1] for _ in range(3000)}
    jobs, seeds = bench.load_jobs()
    assert jobs == bench.make_jobs() and seeds == [0, 1]  # the YAML is generated: --write-preset
    assert len(jobs) >= 100
    assert not captions & {j["prompt"] for j in jobs}
    assert {j["tier"] for j in jobs} == {"attribute", "object", "part"}


def test_collateral_jobs_cover_each_prompt_and_share_noise_with_their_singles():
    jobs = bench.collateral_jobs(world.held_out_prompts())
    assert {j["tier"] for j in jobs} == {"absent", "other-class", "multi", "multi-single"}
    for job in jobs:
        kind = job["expect"]["object"]
        if job["tier"] == "absent":  # a part the class draws at most a quarter of the time
            assert world.PART_PRIOR[kind][job["neg"]] <= 0.25
        if job["tier"] == "other-class":
            assert job["neg"] in world.CLASSES and job["neg"] != kind
        if job["tier"] == "multi":
            singles = [j for j in jobs if j["tier"] == "multi-single" and j["noise"] == job["noise"]]
            assert [j["neg"] for j in singles] == job["neg"] and len(job["neg"]) in (2, 3)
    assert not {j["prompt"] for j in jobs} & set(bench.dev_prompts())  # tuning prompts are not the benchmark's


def test_collateral_statistics_on_known_records():
    def record(job, seed, tier, obj, absent, colour="red", distractors="none"):
        return {"job": job, "seed": seed, "tier": tier, "object": obj, "absent": absent, "clean": obj and absent,
                "colour": colour, "distractors": distractors, "neg": "x"}

    none = [record(i, 0, "absent", True, False) for i in range(10)]
    # the method loses the object in 3 of 10 images and turns 4 bodies yellow
    method = [record(i, 0, "absent", i >= 3, True, "yellow" if i < 4 else "red") for i in range(10)]
    cell = bench.collateral({"none": none, "vsf-paper": none, "m": method})["m"]["absent"]
    assert cell["object"]["mean"] == 0.7 and cell["gone"]["mean"] == 1.0
    assert cell["colour_tv"]["tv"] == 0.4 and cell["distractor_tv"]["tv"] == 0.0
    assert cell["object_vs_none"]["delta"] == -0.3 and cell["object_vs_none"]["p"] == 0.25  # McNemar: 0 vs 3
    assert bench.total_variation(["a", "b"], ["b", "a"]) == 0.0


def test_bench_reuses_rows_an_earlier_run_saved(tmp_path, monkeypatch, capsys):
    import json
    import re

    import yaml

    jobs = [j for j in bench.make_jobs() if j["tier"] == "part"][:2]
    preset = tmp_path / "two.yaml"
    preset.write_text(yaml.safe_dump({"seeds": [0], "jobs": [
        {"prompt": j["prompt"], "neg": j["neg"], "meta": {"tier": j["tier"], "expect": j["expect"]}} for j in jobs]}))
    common = ["--preset", str(preset), "--tiers", "toyneg", "--seeds", "0"]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    bench.main([*common, "--configs", "none", "--json", str(first)])
    rendered = []
    real_run = bench.run
    monkeypatch.setattr(bench, "run", lambda pipe, jobs, seeds, config: rendered.append(config.name) or
                        real_run(pipe, jobs, seeds, config))
    bench.main([*common, "--configs", "vsf,none", "--reuse", str(first), "--json", str(second)])
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert rendered == ["vsf"]  # none comes from the first run, image by image
    assert b["records"]["none"] == a["records"]["none"]
    assert list(b["results"]) == list(b["records"]) == ["vsf", "none"]  # in --configs order
    assert len(b["records"]["vsf"]) == 2
    (tmp_path / "bad.json").write_text("{")
    for argv, says in [(["--preset", str(preset), "--tiers", "toyneg", "--seeds", "1", "--reuse", str(first)],
                        "--reuse .* it ran"),
                       ([*common, "--reuse", str(tmp_path / "bad.json")], "--reuse .*bad.json: not a --json file"),
                       ([*common, "--configs", ""], "--configs: name at least one"),
                       ([*common, "--configs", "vsf-nope"], "--configs: unknown vsf-nope")]:
        with pytest.raises(SystemExit) as exit_:  # usage errors: argparse's exit code 2 and its one error line
            bench.main(argv)
        assert exit_.value.code == 2
        assert re.search("error: " + says, capsys.readouterr().err)


def test_every_word_is_one_token():
    clip, t5 = text.clip_tokenizer(), text.t5_tokenizer()
    for word in world.VOCAB:
        assert len(clip(word, add_special_tokens=False).input_ids) == 1
        assert len(t5(word, add_special_tokens=False).input_ids) == 1


def test_every_word_is_one_qwen_token_with_or_without_its_space():
    tok = text.qwen_tokenizer()
    for word in world.VOCAB:
        assert len(tok.tokenize(word)) == 1 and len(tok.tokenize(" " + word)) == 1, word
    assert len(tok.tokenize(bench.UNTRAINED)) > 1  # an unknown word falls back to bytes


def test_z_training_encoding_is_the_pipelines(toy_z):
    captions = ["a red car with wheels and a ball", "wheels"]
    with torch.no_grad():
        ours = text.encode_qwen(toy_z.text_encoder, toy_z.tokenizer, captions)
        ref = toy_z.encode_prompt(list(captions), do_classifier_free_guidance=False, max_sequence_length=text.QWEN_TOKENS)[0]
    assert [len(e) for e in ours] == [len(e) for e in ref] == [16, 9]  # 8 template tokens, one per word
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, ref))


def test_training_encoding_is_the_pipelines(toy):
    captions = ["a red car with wheels and a ball", "a small tower on the left"]
    ids = text.Tokenized(toy.tokenizer, toy.tokenizer_2, toy.tokenizer_3, captions)
    with torch.no_grad():
        embeds, pooled = text.encode(toy.text_encoder, toy.text_encoder_2, toy.text_encoder_3, ids)
        ref, _, ref_pooled, _ = toy.encode_prompt(captions, None, None, do_classifier_free_guidance=False, max_sequence_length=text.MAX_TOKENS)
    assert torch.equal(embeds, ref) and torch.equal(pooled, ref_pooled)


@pytest.mark.parametrize("alias", TOYS)
def test_shipped_models_are_small_and_safetensors(alias):
    files = [p for p in TOYS[alias].rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 15 * 2**20
    assert any(p.suffix == ".safetensors" for p in files)
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".ckpt") for p in files)


# Full captions the model was trained on the like of; the judge must read back what each names.
NAMED = [
    ("a red car with wheels", {"car", "red", "wheels"}),
    ("a blue house with a roof", {"house", "blue", "roof"}),
    ("a green tree and a ball", {"tree", "green", "ball"}),
    ("a yellow tower with a roof and a sun", {"tower", "yellow", "roof", "sun"}),
    ("a purple car with wheels and a ball", {"car", "purple", "wheels", "ball"}),
    ("a big red house with a roof on the right", {"house", "red", "roof"}),
    ("a small blue tower on the left", {"tower", "blue"}),
    ("a yellow tree with wheels", {"tree", "yellow", "wheels"}),
]


# The share of named words each toy draws at 4 steps, measured on its shipped weights, less a margin: toy-z had
# a third fewer training steps (docs/toy.md) and draws 0.88.
DRAWS_NAMED = {"toy": 0.9, "toy-z": 0.85}


def test_models_render_what_prompts_name(either, request):
    prompts = [p for p, _ in NAMED for _ in range(2)]
    imgs = bench.generate(either, prompts, ["music"] * len(prompts), list(range(len(prompts))), bench.CONFIGS["none"], steps=4)
    assert imgs.shape == (len(prompts), world.SIZE, world.SIZE, 3) and imgs.dtype == np.uint8
    checks = [detector.read(img).has(w) for img, (_, words) in zip(imgs, [n for n in NAMED for _ in range(2)]) for w in words]
    assert np.mean(checks) >= DRAWS_NAMED[request.node.callspec.params["either"]], np.mean(checks)


def _absent_rate(pipe, jobs, config):
    records = bench.run(pipe, jobs, [0], config)
    return np.mean([r["absent"] for r in records])


def test_vsf_removes_what_none_draws(either):
    # Negatives the model draws by default: each class's usual colour, and its primary part. On toy-z the paper's
    # VSF removes them mostly by losing the object (docs/toy.md); the next test holds that finding.
    jobs = [j for j in bench.load_jobs()[0] if j["tier"] == "part" or j["neg"] == world.TYPICAL_COLOUR[j["expect"]["object"]]]
    none = _absent_rate(either, jobs, bench.CONFIGS["none"])
    vsf = _absent_rate(either, jobs, bench.CONFIGS["vsf"])
    assert vsf - none >= 0.3, (none, vsf)
    assert _absent_rate(either, jobs, bench.CONFIGS["vsf"]) == vsf  # seeded: the same images again


def test_on_toy_z_the_contrast_variant_keeps_the_objects_the_papers_vsf_loses(toy_z):
    # docs/toy.md, seeds 0-3 of the part tier: objects 0.69 unguided, 0.31 under the paper's VSF, 0.77 under contrast.
    jobs = [j for j in bench.load_jobs()[0] if j["tier"] == "part"]

    def objects(config):
        return np.mean([r["object"] for r in bench.run(toy_z, jobs, [0, 1, 2, 3], bench.CONFIGS[config])])

    paper, contrast = objects("vsf-paper"), objects("vsf-contrast")
    assert paper <= 0.45 and contrast - paper >= 0.25, (paper, contrast)


def test_on_the_sd3_toy_text_contrast_does_not_add_the_suns_every_flipped_negative_adds(toy):
    # docs/toy.md, 12 seeds of the multi tier's singles that are not `sun`: images with a sun 0.43 unguided,
    # 0.79 under the paper's VSF, 0.43 under text-contrast.
    jobs = [j for j in bench.collateral_jobs(world.held_out_prompts()) if j["tier"] == "multi-single" and j["neg"] != "sun"]

    def suns(config):
        records = bench.run(toy, jobs, [0, 1], bench.CONFIGS[config])
        return np.mean(["sun" in r["distractors"].split("+") for r in records])

    none, paper, text = suns("none"), suns("vsf-paper"), suns("vsf-text-contrast")
    assert paper - none >= 0.2 and abs(text - none) <= 0.12, (none, paper, text)


def test_training_smoke(tmp_path):
    from vsf_cli.toy import train

    out = tmp_path / "toy"
    train.main(["--out", str(out), "--steps", "2", "--vae-steps", "2", "--batch", "4", "--layers", "1", "--check", "4", "--minutes", "5"])
    pipe = bench.load(out)
    img = bench.generate(pipe, ["a red car"], ["wheels"], [0], bench.CONFIGS["vsf"], steps=2)
    assert img.shape == (1, world.SIZE, world.SIZE, 3)


def test_z_training_smoke_loads_through_the_stock_pipeline(tmp_path):
    from diffusers import ZImagePipeline

    from vsf_cli.toy import train

    out = tmp_path / "toy-z"
    train.main(["--arch", "zimage", "--out", str(out), "--steps", "2", "--batch", "4", "--layers", "1", "--minutes", "5"])
    pipe = bench.load(out)
    assert isinstance(pipe, ZImagePipeline) and pipe.transformer.config.in_channels == 4
    img = bench.generate(pipe, ["a red car"], ["wheels"], [0], bench.CONFIGS["vsf"], steps=2)
    assert img.shape == (1, world.SIZE, world.SIZE, 3)
    with pytest.raises(ValueError, match="pooled"):
        bench.generate(pipe, ["a red car"], ["wheels"], [0], bench.CONFIGS["vsf+pool1.1"], steps=2)
