"""A `[train]` table is checked whole at validation: every bad setting is refused with its file, key and
fix (exit 2, no traceback), and every shipped training recipe validates on a generated dataset without
any weights on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._offline import offline_here
from tests.train.test_dataset import _video
from wanflow.cli import main
from wanflow.errors import RecipeError
from wanflow.plugins import build_registry
from wanflow.recipe import load_recipe
from wanflow.recipe.canonical import format_file

ROOT = Path(__file__).resolve().parents[2]
TRAIN_RECIPES = sorted((ROOT / "recipes").glob("train-*.toml"))
T2V = 'model = "wan2.1-t2v-1.3b"\n[train]\ndataset = "data.csv"\n'
A14B = 'model = "wan2.2-t2v-a14b"\n[train]\ndataset = "data.csv"\n'


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    """Recipes in tmp_path, messages relative to it, no weights anywhere (validation needs none)."""
    offline_here(tmp_path, monkeypatch)
    (tmp_path / "data.csv").write_text("video,prompt\n", encoding="utf-8")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder of two captioned 9-frame clips: a dataset every shipped training recipe can size."""
    root = tmp_path_factory.mktemp("clips")
    for i in range(2):
        _video(root / f"clip{i}.mp4", 9, 64, 48)
        (root / f"clip{i}.txt").write_text(f"clip number {i}", encoding="utf-8")
    rows = "".join(f"{root / f'clip{i}.mp4'},clip number {i},{50 * i}\n" for i in range(2))
    (root.parent / "speedcontrol.csv").write_text("video,prompt,motion_bucket_id\n" + rows, encoding="utf-8")
    return root


def refused(tmp_path: Path, text: str, *sets: str) -> list[str]:
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, sets=sets)
    return caught.value.problems


def test_a_plain_training_recipe_resolves(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(T2V, encoding="utf-8")
    resolved = load_recipe(path)
    assert resolved.recipe.train.dataset == str(tmp_path / "data.csv")  # absolute, like every input


@pytest.mark.parametrize(("lines", "expected"), [
    ("frames = 80", "r.toml: [train].frames = 80: must be 4n+1 (77 or 81)"),
    ("width = 832", "r.toml: [train].height = 0: set both width and height for a fixed size, or neither"),
    ("width = 840\nheight = 480", "r.toml: [train].width = 840: must be a multiple of 16 for wan2.1-t2v-1.3b"),
    ("frame_buckets = [9, 10, 85]", "r.toml: [train].frame_buckets = [9, 10, 85]: 10, 85: each bucket must be "
                                    "4n+1 and at most [train].frames (81)"),
    ("width = 832\nheight = 480\naspect_ratios = [1.5]", "r.toml: [train].aspect_ratios = [1.5]: only applies to "
                                                         "dynamic resolution"),
    ("max_pixels = 100", "r.toml: [train].max_pixels = 100: is smaller than one 16×16 tile; use at least 256"),
    ('components = ["vae"]', "r.toml: [train].components = [\"vae\"]: 'vae' cannot be trained: a LoRA is trained "
                             "on a DiT"),
    ('method = "full"\ncomponents = ["text_encoder"]', "'text_encoder' cannot be trained: full fine-tuning trains "
                                                       "DiTs, and the encoders run once per sample as cached steps"),
    ('components = ["dit_high_noise"]', "r.toml: [train].components = [\"dit_high_noise\"]: wan2.1-t2v-1.3b has no "
                                        "component 'dit_high_noise'"),
    ('components = ["dit", "dit"]', "names 'dit' twice; list each component once"),
    ("lora_targets = []", "r.toml: [train].lora_targets = []: is empty, so the LoRA would change nothing"),
    ('lora_targets = ["q", " "]', "r.toml: [train].lora_targets = [\"q\", \" \"]: holds an empty name"),
    ('method = "full"\nlora_init = "data.csv"', 'r.toml: [train].lora_init = "data.csv": continues a LoRA, but '
                                                'method = "full" trains the weights themselves'),
    ('method = "full"\nexport_dialect = "comfyui"', 'r.toml: [train].export_dialect = "comfyui": names a LoRA '
                                                    'dialect, but method = "full" writes DiT weights'),
    ("preset_lora_scale = 0.5", "r.toml: [train].preset_lora_scale = 0.5: has no preset LoRA to scale"),
    ('lora_init = "data.csv"\npreset_lora = "data.csv"', 'r.toml: [train].preset_lora = "data.csv": is also '
                                                          'lora_init'),
    ("timestep_range = [0.6, 0.2]", "r.toml: [train].timestep_range = [0.6, 0.2]: must be [min, max] with "
                                    "min < max"),
    ("timestep_range = [0.5, 0.5]", "r.toml: [train].timestep_range = [0.5, 0.5]: must be [min, max] with "
                                    "min < max"),
    ("timestep_range = [0.0, 1.5]", "r.toml: [train].timestep_range[1] = 1.5: must be ≤ 1"),
    ("steps = 100\nwarmup_steps = 100", "r.toml: [train].warmup_steps = 100: is not below [train].steps (100)"),
    ("steps = 100\nvalidate_every = 200", "r.toml: [train].validate_every = 200: is more than [train].steps (100)"),
    ("validate_every = 50", "r.toml: [train].validate_every = 50: has nothing to validate"),
    ('validation_prompts = ["a cat", ""]', "r.toml: [train].validation_prompts = [\"a cat\", \"\"]: holds an "
                                           "empty prompt"),
    ("processes = 2", "r.toml: [train].processes = 2: needs a distribution to share the work"),
    ("gradient_checkpointing = false\noffload_activations = true",
     "r.toml: [train].offload_activations = true: offloads the activations that gradient checkpointing keeps"),
    ("learning_rate = inf", "r.toml: [train].learning_rate = inf: must be a finite number"),
    ("lora_alpha = inf", "r.toml: [train].lora_alpha = inf: must be a finite number"),
])
def test_a_bad_setting_is_refused_naming_its_key_and_the_fix(tmp_path, lines, expected):
    problems = refused(tmp_path, T2V + lines + "\n")
    assert any(expected in p for p in problems), "\n".join(problems)


def test_fp8_storage_is_refused_for_full_fine_tuning(tmp_path):
    problems = refused(tmp_path, T2V + 'method = "full"\n[memory]\nfp8 = true\n')
    assert problems == ['r.toml: [memory].fp8 = true: stores frozen weights in fp8, but [train].method = "full" '
                        'trains the DiT itself; set fp8 = false, or train a LoRA (method = "lora")']


def test_fp8_matmuls_are_refused_for_training(tmp_path):
    problems = refused(tmp_path, T2V + '[memory]\nfp8 = true\n[runtime]\nfp8_matmul = true\n')
    assert problems == ["r.toml: [runtime].fp8_matmul = true: fp8 matmuls have no backward, and training "
                        "multiplies the frozen fp8 base in the compute dtype; set fp8_matmul = false"]


def test_sizes_are_multiples_of_the_familys_spatial_factor(tmp_path):
    ti2v = T2V.replace("wan2.1-t2v-1.3b", "wan2.2-ti2v-5b")
    problems = refused(tmp_path, ti2v + "width = 848\nheight = 480\n")
    assert problems == ["r.toml: [train].width = 848: must be a multiple of 32 for wan2.2-ti2v-5b (VAE stride × "
                        "patch size): use 832 or 864"]


def test_a14b_components_are_the_experts(tmp_path):
    problems = refused(tmp_path, A14B + 'components = ["dit"]\n')
    assert problems == ["r.toml: [train].components = [\"dit\"]: wan2.2-t2v-a14b has no component 'dit' (its "
                        "components: dit_high_noise, dit_low_noise, text_encoder, tokenizer, vae); its DiTs are "
                        "dit_high_noise and dit_low_noise"]
    # one expert alone trains on its side of the boundary (DiffSynth's and diffusion-pipe's one expert per run)
    path = tmp_path / "r.toml"
    for one in ("dit_low_noise", "dit_high_noise"):
        path.write_text(A14B + f'components = ["{one}"]\n', encoding="utf-8")
        assert load_recipe(path).recipe.train.components == (one,)
    # but a validation video needs both experts' steps
    assert refused(tmp_path, A14B + 'components = ["dit_high_noise"]\nvalidation_prompts = ["a cat"]\n') == [
        "r.toml: [train].validation_prompts = [\"a cat\"]: a video of wan2.2-t2v-a14b is denoised by both experts, "
        "and this run trains 'dit_high_noise' alone; use validation_samples for a held-out loss on its side of "
        "the boundary, and a generation recipe with both experts' files to see videos (or train both experts: "
        "components = ['dit_high_noise', 'dit_low_noise'])"]
    path.write_text(A14B + 'components = ["dit_low_noise", "dit_high_noise"]\n', encoding="utf-8")
    assert load_recipe(path).recipe.train.components == ("dit_low_noise", "dit_high_noise")


def test_every_problem_is_reported_at_once(tmp_path):
    problems = refused(tmp_path, T2V + "frames = 80\nprocesses = 2\nlearning_rate = inf\n"
                                       'timestep_range = [0.9, 0.1]\n')
    assert len(problems) == 4, "\n".join(problems)


def test_paths_resolve_against_the_recipe_folder_and_folders_go_where_folders_may(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "init.safetensors").write_bytes(b"")
    problems = refused(tmp_path, T2V.replace("data.csv", "clips") + 'base_path = "data.csv"\n'
                       'lora_init = "clips"\npreset_lora = "gone.safetensors"\n')
    assert problems == [
        'r.toml: [train].base_path = "data.csv": is a file; name the folder that the dataset\'s media paths are '
        "relative to (or remove it: they resolve against the metadata file's folder)",
        'r.toml: [train].lora_init = "clips": is a folder; name a file',
        f'r.toml: [train].preset_lora = "gone.safetensors": no such file ({tmp_path / "gone.safetensors"}); fix '
        "the path (a relative path starts at the folder of the recipe that names it)"]
    path = tmp_path / "r.toml"
    path.write_text(T2V.replace("data.csv", "clips") + 'base_path = "clips"\nlora_init = "init.safetensors"\n',
                    encoding="utf-8")
    train = load_recipe(path).recipe.train
    assert (train.dataset, train.base_path, train.lora_init) == (
        str(tmp_path / "clips"), str(tmp_path / "clips"), str(tmp_path / "init.safetensors"))


def test_a_missing_or_empty_dataset_is_named(tmp_path):
    assert refused(tmp_path, T2V.replace("data.csv", "nope/metadata.csv")) == [
        f'r.toml: [train].dataset = "nope/metadata.csv": no such file or folder '
        f"({tmp_path / 'nope' / 'metadata.csv'}); fix the path (a relative path starts at the folder of the "
        "recipe that names it)"]
    assert refused(tmp_path, T2V.replace("data.csv", "")) == [
        'r.toml: [train].dataset = "": is empty; name the metadata file (.csv, .json or .jsonl) or a folder of '
        "media with .txt captions"]


def test_a_training_recipe_needs_the_familys_inputs_only_for_validation_videos(tmp_path):
    i2v = T2V.replace("wan2.1-t2v-1.3b", "wan2.1-i2v-14b-480p")
    path = tmp_path / "r.toml"
    path.write_text(i2v, encoding="utf-8")
    assert load_recipe(path).recipe.inputs.image is None  # the samples bring their first frames
    problems = refused(tmp_path, i2v + 'validation_prompts = ["a cat"]\n')
    assert problems == ['r.toml: [inputs].image: is required by wan2.1-i2v-14b-480p; add image = "path" under '
                        "[inputs]"]


def test_validate_exits_2_naming_file_and_key_without_a_traceback(tmp_path, capsys):
    (tmp_path / "r.toml").write_text(T2V + "frames = 80\nprocesses = 2\n", encoding="utf-8")
    assert main(["validate", "r.toml"]) == 2
    err = capsys.readouterr().err
    assert "r.toml: [train].frames = 80: must be 4n+1" in err
    assert "r.toml: [train].processes = 2: needs a distribution" in err
    assert "Traceback" not in err


def test_the_command_line_refuses_a_bad_set_of_a_train_key(tmp_path):
    (tmp_path / "r.toml").write_text(T2V, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "wanflow", "validate", "r.toml", "--set",
                           "train.timestep_range=[0.7, 0.3]"], capture_output=True, text=True, env=env, check=False,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--set train.timestep_range=[0.7, 0.3]: [train].timestep_range = [0.7, 0.3]: must be [min, max]" \
        in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def quickstart_init(tmp_path_factory) -> Path:
    """What recipes/train-quickstart.toml starts from (``build_family``'s output: text encoder, VAE,
    the DiT's initialisation), here the shipped text encoder and VAE and a small initial DiT."""
    import shutil

    from scripts.quickstart import build_family, init_dit

    root = tmp_path_factory.mktemp("quickstart-init")
    for part in ("text_encoder", "vae", "tokenizer"):
        shutil.copytree(build_family.ASSETS / part, root / part)
    init_dit.write_dit(root / "dit", init_dit.quickstart_config(dim=64, layers=2, heads=1, ffn=64), 0)
    return root


def _sets(path: Path, clips: Path, init: Path) -> list[str]:
    """A generated dataset, and for the quickstart recipe (which trains from a written starting point,
    not from downloaded weights) that starting point, with a batch the two generated clips can fill."""
    quickstart = [f"models.{c}.source={init}" for c in ("dit", "text_encoder", "vae")] + ["train.batch_size=2"]
    quickstart = quickstart if path.stem.startswith("train-quickstart") else []
    speed = clips.parent / "speedcontrol.csv"  # rows with bucket ids (the clips fixture writes it)
    dataset = speed if "speedcontrol" in path.stem and speed.is_file() else clips
    return [f"train.dataset={dataset}", *quickstart]


def test_training_recipes_ship_one_per_family_kind_and_the_quickstart_model_s_stages():
    families = build_registry(entry_points=False)
    models = {p.stem: load_recipe(p, families=families, sets=_sets(p, Path("."), Path("."))).model
              for p in TRAIN_RECIPES}
    assert sorted(models.values()) == ["wan2.1-1.3b-speedcontrol", "wan2.1-i2v-14b-480p", "wan2.1-t2v-1.3b",
                                       "wan2.2-t2v-a14b", "wan2.2-ti2v-5b"] + ["wanflow-tiny"] * 5


@pytest.mark.parametrize("path", TRAIN_RECIPES, ids=[p.stem for p in TRAIN_RECIPES])
def test_a_shipped_training_recipe_validates_on_a_generated_dataset_without_weights(path, clips, quickstart_init,
                                                                                     capsys):
    text = path.read_text(encoding="utf-8")
    assert format_file(str(path)) == text  # canonical
    sets = _sets(path, clips, quickstart_init)
    written = load_recipe(path, sets=sets).recipe
    assert written.sampler.seed == 0 and written.train is not None
    own = text if "include" not in text else (path.parent / "train-quickstart.toml").read_text(encoding="utf-8")
    assert 'dataset = "data/' in own and "/metadata.csv\"" in own  # a dataset folder beside the recipe
    flags = [a for s in sets for a in ("--set", s)]
    assert main(["validate", str(path), *flags]) == 0, capsys.readouterr().err
    assert f"ok: {path}" in capsys.readouterr().out
    assert list((Path(os.environ["WANFLOW_MODELS"])).iterdir()) == []  # nothing was downloaded


def test_the_a14b_recipe_trains_both_experts():
    a14b = next(p for p in TRAIN_RECIPES if "a14b" in p.stem)
    resolved = load_recipe(a14b, sets=["train.dataset=."])
    assert resolved.recipe.train.components == ("dit_high_noise", "dit_low_noise")


@pytest.mark.parametrize("policy", ["stream", "disk"])
def test_a_lora_over_a_wan_dit_may_stream_its_frozen_blocks(tmp_path, policy):
    path = tmp_path / "r.toml"
    path.write_text(T2V + f'[memory]\npolicy = "{policy}"\n', encoding="utf-8")
    assert load_recipe(path).recipe.memory.policy == policy  # nothing refused


STREAM_REFUSALS = [
    ('method = "full"\n', "stream", "full fine-tuning trains every weight of the DiT, which stays resident",
     'method = "lora"'),
    ("gradient_checkpointing = false\n", "disk", "needs [train].gradient_checkpointing = true", "set it to true"),
    ('distribution = "ddp"\n', "stream", 'distribution = "ddp" starts from every process', 'distribution = "none"'),
    ('preset_lora = "p.safetensors"\n', "stream", "merged into the base's weights where each lives",
     'use policy "auto" or "none"'),
]


@pytest.mark.parametrize(("train", "policy", "why", "fix"), STREAM_REFUSALS)
def test_streaming_the_frozen_base_is_refused_where_it_cannot_run_naming_why_and_the_fix(tmp_path, train, policy,
                                                                                          why, fix):
    (tmp_path / "p.safetensors").write_bytes(b"")
    problems = refused(tmp_path, T2V + train + f'[memory]\npolicy = "{policy}"\n')
    mine = [p for p in problems if p.startswith(f'r.toml: [memory].policy = "{policy}": ')]
    assert len(mine) == 1 and why in mine[0] and fix in mine[0], problems


def test_a_wan_dit_s_fp8_base_streams_and_a_dit_variant_is_refused(tmp_path):
    path = tmp_path / "r.toml"
    for policy in ("stream", "disk"):  # a Wan DiT's fp8 blocks stream as fp8
        path.write_text(T2V + f'[memory]\npolicy = "{policy}"\nfp8 = true\n', encoding="utf-8")
        assert load_recipe(path).recipe.memory.fp8
    animate = 'model = "wan2.2-animate-14b"\n[train]\ndataset = "data.csv"\n[memory]\npolicy = "disk"\n'
    path.write_text(animate, encoding="utf-8")  # Animate's blocks stream, its face modules resident
    assert load_recipe(path).recipe.memory.policy == "disk"
    for model in ("wan2.2-animate-14b", "wan2.2-s2v-14b"):  # their fp8 blocks stream as fp8 too
        path.write_text(f'model = "{model}"\n[train]\ndataset = "data.csv"\n[memory]\npolicy = "disk"\nfp8 = true\n',
                        encoding="utf-8")
        assert load_recipe(path).recipe.memory.fp8
    s2v = 'model = "wan2.2-s2v-14b"\n[train]\ndataset = "data.csv"\n[memory]\npolicy = "disk"\n'
    path.write_text(s2v, encoding="utf-8")  # S2V's blocks stream, its audio modules resident
    assert load_recipe(path).recipe.memory.policy == "disk"
    problems = refused(tmp_path, 'model = "video-as-prompt-wan2.1-14b"\n[train]\ndataset = "data.csv"\n[memory]\n'
                       'policy = "disk"\n')
    assert any(p.startswith('r.toml: [memory].policy = "disk": video-as-prompt-wan2.1-14b\'s DiT ') and
               "does not stream its blocks while training yet" in p for p in problems), problems


def test_a_refused_streaming_policy_exits_2_without_a_traceback(tmp_path, capsys):
    from wanflow.cli import main

    path = tmp_path / "r.toml"
    path.write_text(T2V + 'method = "full"\n[memory]\npolicy = "stream"\n', encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert '[memory].policy = "stream": full fine-tuning' in err and "Traceback" not in err


DERIVATIVES = ("wan2.1-fun-1.3b-control", "wan2.1-fun-v1.1-14b-control", "wan2.1-fun-v1.1-1.3b-control-camera",
               "wan2.1-fun-1.3b-inp", "wan2.2-fun-a14b-control-camera", "wan2.1-vace-1.3b", "wan2.2-vace-fun-a14b",
               "wan2.1-1.3b-speedcontrol")


@pytest.mark.parametrize("family", DERIVATIVES)
def test_a_derivative_family_trains_with_its_conditioning_from_dataset_columns(tmp_path, family):
    path = tmp_path / "r.toml"
    path.write_text(f'model = "{family}"\n[train]\ndataset = "data.csv"\n', encoding="utf-8")
    assert load_recipe(path).recipe.train is not None  # nothing refused


def test_every_conditioner_kind_of_the_vace_fun_and_speed_control_families_is_trainable():
    from wanflow.families import fun, vace
    from wanflow.recipe.train_rules import TRAINABLE_CONDITIONING

    families = [*fun.families(), *vace.families()]
    assert len(families) == 18
    kinds = {c.kind for family in families for c in family.conditioners}
    assert kinds <= TRAINABLE_CONDITIONING, kinds - TRAINABLE_CONDITIONING


def test_validation_videos_of_a_derivative_family_are_refused_naming_why(tmp_path):
    problems = refused(tmp_path, 'model = "wan2.1-fun-v1.1-14b-control"\n[train]\ndataset = "data.csv"\n'
                       'validation_prompts = ["a dancer"]\n')
    assert any(p.startswith('r.toml: [train].validation_prompts = ["a dancer"]: wan2.1-fun-v1.1-14b-control is '
                            "conditioned by per-sample inputs") and "validation_samples" in p for p in problems), problems


def test_inputs_a_derivative_family_s_training_would_not_read_are_refused_naming_the_column(tmp_path):
    (tmp_path / "c.mp4").write_bytes(b"")
    problems = refused(tmp_path, 'model = "wan2.1-fun-v1.1-14b-control"\n[inputs]\ncontrol_video = "c.mp4"\n'
                       '[train]\ndataset = "data.csv"\n')
    assert any(p.startswith("r.toml: [inputs].control_video = ") and "is not read by training: each sample takes "
               "its own from the dataset's control_video column" in p for p in problems), problems
    path = tmp_path / "v.toml"
    path.write_text('model = "wan2.1-vace-1.3b"\n[inputs.vace]\nscale = 0.5\n[train]\ndataset = "data.csv"\n',
                    encoding="utf-8")
    assert load_recipe(path).values["inputs.vace.scale"] == 0.5  # how contexts are built: every sample's


def _checked(family) -> list[str]:
    from wanflow.recipe.problems import Problems
    from wanflow.recipe.schema import Recipe, Train
    from wanflow.recipe.train_rules import check_train

    found = Problems("r.toml")
    check_train(Recipe(model=family.name, train=Train(dataset="data.csv")), family, found)
    return found.items


def test_krea_trains_only_as_diffsynth_samples_it_not_for_its_block_causal_sampler(tmp_path):
    krea = 'model = "krea-realtime-video"\n[train]\ndataset = "data.csv"\n'
    problems = refused(tmp_path, krea)
    assert any("solver" in p and "Self-Forcing" in p and 'solver = "euler"' in p for p in problems), problems
    path = tmp_path / "euler.toml"
    path.write_text('model = "krea-realtime-video"\n[sampler]\nsolver = "euler"\n[train]\ndataset = "data.csv"\n',
                    encoding="utf-8")
    assert load_recipe(path).recipe.train is not None


def test_a_conditioner_kind_without_dataset_columns_is_refused_naming_it():
    import types

    import attrs

    base = build_registry(entry_points=False).family("wan2.1-t2v-1.3b")
    audio = attrs.evolve(base, conditioners=(types.SimpleNamespace(kind="audio-embeds", options=()),))
    text = " ".join(_checked(audio))
    assert "cannot be trained with [train] yet: its DiT reads audio-embeds" in text, text


def test_the_base_families_conditioning_is_trainable():
    from wanflow.recipe.train_rules import TRAINABLE_CONDITIONING

    registry = build_registry(entry_points=False)
    for name in ("wan2.1-t2v-1.3b", "wan2.1-i2v-14b-480p", "wan2.1-flf2v-14b-720p", "wan2.2-i2v-a14b",
                 "wan2.2-ti2v-5b", "wanflow-tiny"):
        assert all(c.kind in TRAINABLE_CONDITIONING and not c.options for c in registry.family(name).conditioners)


def test_caption_dropout_is_refused_where_nothing_reads_the_empty_prompt(tmp_path):
    problems = refused(tmp_path, T2V + 'task = "direct_distill"\ncaption_dropout = 0.1\n')
    assert any("caption_dropout" in p and "never reads the empty prompt" in p for p in problems), problems
    path = tmp_path / "ok.toml"
    path.write_text(T2V + "caption_dropout = 0.1\n", encoding="utf-8")
    assert load_recipe(path).recipe.train.caption_dropout == 0.1
    assert any("caption_dropout" in p for p in refused(tmp_path, T2V + "caption_dropout = 1.5\n"))


SPEED = 'model = "wan2.1-1.3b-speedcontrol"\n[train]\ndataset = "data.csv"\n'


def test_speed_control_s_motion_controller_trains_alone_by_full_fine_tuning(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(SPEED + 'method = "full"\ncomponents = ["motion_controller"]\n', encoding="utf-8")
    assert load_recipe(path).recipe.train.components == ("motion_controller",)
    assert refused(tmp_path, SPEED + 'components = ["motion_controller"]\n') == [
        "r.toml: [train].components = [\"motion_controller\"]: 'motion_controller' is trained whole, not by a LoRA "
        "(a LoRA adapts a DiT's layers, and 'motion_controller' is a small network of its own, which DiffSynth "
        'trains fully); use method = "full"']
    assert refused(tmp_path, SPEED + 'method = "full"\ncomponents = ["dit", "motion_controller"]\n') == [
        "r.toml: [train].components = [\"dit\", \"motion_controller\"]: 'motion_controller' trains alone, every "
        "other component frozen (as DiffSynth trains it); use components = [\"motion_controller\"], and train a DiT "
        "in a run of its own"]


def test_a_component_that_is_not_a_trainable_part_stays_refused(tmp_path):
    problems = refused(tmp_path, SPEED + 'method = "full"\ncomponents = ["vae"]\n')
    assert problems == ["r.toml: [train].components = [\"vae\"]: 'vae' cannot be trained: full fine-tuning trains "
                        "DiTs, and the encoders run once per sample as cached steps; use 'dit'"]
    problems = refused(tmp_path, T2V + 'method = "full"\ncomponents = ["motion_controller"]\n')
    assert len(problems) == 1 and "wan2.1-t2v-1.3b has no component 'motion_controller'" in problems[0]


def test_a_dtype_or_device_the_trained_controller_would_not_honour_is_refused(tmp_path):
    part = SPEED + 'method = "full"\ncomponents = ["motion_controller"]\n'
    problems = refused(tmp_path, part + '[models.motion_controller]\ndtype = "bf16"\ndevice = "cpu"\n')
    assert problems == [
        "r.toml: [models.motion_controller].dtype = \"bf16\": 'motion_controller' trains in fp32 (full fine-tuning's "
        'master weights; the export takes its base file\'s dtype); remove it, or set "fp32"',
        "r.toml: [models.motion_controller].device = \"cpu\": 'motion_controller' trains on the run's device, beside "
        "the DiT it drives; remove it"]
    path = tmp_path / "ok.toml"
    path.write_text(SPEED + '[models.motion_controller]\ndtype = "bf16"\n', encoding="utf-8")
    assert load_recipe(path).recipe.models["motion_controller"].dtype == "bf16"  # its frozen offset's, honoured


def test_longcat_s_frozen_base_streams_as_a_wan_dit_s_and_is_refused_for_what_cannot_stream(tmp_path):
    longcat = 'model = "longcat-video"\n[train]\ndataset = "data.csv"\n'
    path = tmp_path / "ok.toml"
    for policy in ("stream", "disk"):  # a LoRA's base streams, fp8 or not
        path.write_text(longcat + f'[memory]\npolicy = "{policy}"\nfp8 = true\n', encoding="utf-8")
        assert load_recipe(path).recipe.memory.policy == policy
    problems = refused(tmp_path, longcat + 'gradient_checkpointing = false\n[memory]\npolicy = "stream"\n')
    mine = [p for p in problems if p.startswith('r.toml: [memory].policy = "stream": ')]
    assert len(mine) == 1 and "needs [train].gradient_checkpointing = true" in mine[0], problems


def test_streaming_is_refused_with_compiled_blocks_naming_the_fix(tmp_path):
    problems = refused(tmp_path, T2V + '[memory]\npolicy = "disk"\n[runtime]\ncompile = "blocks"\n')
    assert any(p.startswith('r.toml: [memory].policy = "disk": [runtime].compile = "blocks" with the frozen base\'s '
                            'blocks streamed while training is not built yet; set compile = "none"') for p in problems), \
        problems
