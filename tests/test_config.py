"""Config schema: official YAMLs unchanged, overrides, and one-line errors naming the key."""

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

import sfd
from sfd import config as config_module
from sfd.config import INERT_RELEASE_KEYS, ConfigError, InertSettingWarning, load_config, save_config
from sfd.lightningdit import LightningDiTArgs
from tests.conftest import DATA

ROOT = Path(__file__).parent.parent
# The shipped configs by kind: diffusion (this schema), texture-VAE tokenizer (LDM layout), SemVAE trainer. The demo's
# configs ship inside the package.
DEMO_CONFIGS = ROOT / "sfd" / "demo" / "configs"
TOKENIZER_CONFIGS = sorted([*(ROOT / "configs" / "tokenizer").glob("*.yaml"), *DEMO_CONFIGS.glob("demo_*.yaml")])
SEMVAE_CONFIGS = sorted([*(ROOT / "configs" / "semvae").glob("*.yaml"), *DEMO_CONFIGS.glob("semvae_*.yaml")])
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "configs").rglob("*.yaml"), *DEMO_CONFIGS.glob("*.yaml")]
                 if p not in TOKENIZER_CONFIGS and p not in SEMVAE_CONFIGS)


@pytest.mark.parametrize("path", TOKENIZER_CONFIGS + SEMVAE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_tokenizer_config_loads(path):
    from sfd.tokenizers.semvae_train import load_train_config
    from sfd.tokenizers.texture_vae import TextureVAEConfig

    if path in TOKENIZER_CONFIGS:
        assert TextureVAEConfig.from_yaml(path).embed_dim == (4 if path.stem.startswith("demo_") else 32)
    else:
        assert load_train_config(path).model.bottleneck_dim in (4, 16)

# Total parameters (incl. REPA projector and pos_embed) of the release sizes, from the golden manifests.
RELEASE_PARAMS = {"LightningDiT-XL/1": 682_765_424, "LightningDiT-1p0B/1": 1_037_191_472,
                  "LightningDiT-B/1": 137_632_304}


@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_config_validates_and_builds(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", InertSettingWarning)  # shipped configs set no key without an effect
        config = load_config(ROOT / path)
    with torch.device("meta"):
        model = sfd.build_model(config)
    params = sum(p.numel() for p in model.parameters())
    if path.startswith("configs/sfd/"):  # the release's own configs give the release's models
        assert params == RELEASE_PARAMS[config.model.model_type]


def test_release_configs_are_all_there():
    names = set(CONFIGS)
    for expected in ["configs/sfd/lightningdit_xl/train.yaml", "configs/sfd/lightningdit_xl/train_80ep_lr2e-4.yaml",
                     "configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml",
                     "configs/sfd/lightningdit_1p0/inference_4m_autoguidance.yaml",
                     "configs/sfd/autoguidance_b/inference.yaml", "configs/sfd/autoguidance_b/inference_retrain.yaml"]:
        assert expected in names


def test_official_values_come_through():
    config = load_config(ROOT / "configs/sfd/lightningdit_xl/train_80ep_lr2e-4.yaml")
    assert (config.optimizer.lr, config.optimizer.beta2) == (2e-4, 0.95)
    assert (config.model.repa_weight, config.model.repa_mode) == (0.5, "cos_mse")
    assert (config.model.semfirst_delta_t, config.model.semantic_chans, config.model.in_chans) == (0.3, 16, 48)
    guided = load_config(ROOT / "configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml")
    assert guided.sample.autoguidance and guided.sample.balanced_sampling
    assert guided.sample.autoguidance_config == "configs/sfd/autoguidance_b/inference.yaml"


def test_defaults_are_the_official_absent_key_values():
    config = load_config(None)
    assert config.data.latent_multiplier == 0.18215
    assert config.model.in_chans == 4 and config.model.semfirst_delta_t == 0.0
    assert config.model.repa_mode == "cos" and config.model.repa_weight == 1.0
    assert config.sample.cfg_interval_start == 0 and config.sample.timestep_shift == 0


def test_dotlist_overrides():
    config = load_config(DATA / "sfd_tiny.yaml", ["sample.cfg_scale=1.7", "model.semfirst_delta_t=0.5"])
    assert config.sample.cfg_scale == 1.7 and config.model.semfirst_delta_t == 0.5


@pytest.mark.parametrize("overrides, key", [
    (["model.no_such_key=1"], "model.no_such_key"),
    (["nosection.key=1"], "nosection"),
    (["sample.cfg_scale=abc"], "sample.cfg_scale"),
    (["model.depth=three"], "model.depth"),
    (["model.semfirst_delta_t=1.0"], "model.semfirst_delta_t"),
    (["model.semfirst_delta_t=-0.1"], "model.semfirst_delta_t"),
    (["model.semantic_chans=48"], "model.semantic_chans"),
    (["model.semantic_chans=0"], "model.semfirst_delta_t"),
    (["model.model_type=LightningDiT-Huge/1", "model.depth=null"], "model.model_type"),
    (["model.num_heads=3"], "model.hidden_size"),
    (["model.repa_mode=l1"], "model.repa_mode"),
    (["model.repa_dino_version=resnet50"], "model.repa_dino_version"),
    (["model.repa_feat_depth=9"], "model.repa_feat_depth"),
    (["model.semfirst_infer_interval_mode=all"], "model.semfirst_infer_interval_mode"),
    (["transport.path_type=VP"], "transport.path_type"),
    (["optimizer.lr=-1"], "optimizer.lr"),
    (["optimizer.beta2=1.0"], "optimizer.beta2"),
    (["optimizer.max_grad_norm=0"], "optimizer.max_grad_norm"),
    (["sample.per_proc_batch_size=0"], "sample.per_proc_batch_size"),
    (["sample.fid_num=0"], "sample.fid_num"),
    (["sample.rtol=0"], "sample.rtol"),
    (["sample.cfg_scale=-1"], "sample.cfg_scale"),
    (["sample.cfg_scale_sem=-0.5"], "sample.cfg_scale_sem"),
    (["sample.cfg_interval_start=1.5"], "sample.cfg_interval_start"),
    (["data.latent_multiplier=0"], "data.latent_multiplier"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["model.semantic_weight=-2"], "model.semantic_weight"),
    (["train.valid_items=0"], "train.valid_items"),
    (["sample.mode=DDIM"], "sample.mode"),
    (["sample.reverse=true"], "sample.reverse"),
    (["data.image_size=250"], "data.image_size"),
    (["vae.downsample_ratio=0"], "vae.downsample_ratio"),
    (["model.hidden_size=0"], "model.hidden_size"),  # a custom size, so no registry value to fall back on
    (["sample.autoguidance=true", "sample.autoguidance_config=null"], "sample.autoguidance_config"),
])
def test_bad_configs_fail_with_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        load_config(DATA / "sfd_tiny.yaml", overrides)
    message = str(error.value)
    assert key in message and "\n" not in message


# Where each LightningDiTArgs field takes its value in sfd.config.model_args. A new field must join one of these sets:
# that is the decision whether (and how) a config sets it.
ARGS_FROM_MODEL_BY_NAME = {"in_chans", "mlp_ratio", "class_dropout_prob", "learn_sigma", "use_qknorm", "use_swiglu",
                           "use_rope", "use_rmsnorm", "wo_shift", "use_checkpoint", "repa_projector_dim"}
ARGS_DERIVED = {"input_size", "num_classes", "semantic_first", "depth", "hidden_size", "num_heads", "patch_size",
                "repa_target_dim", "repa_feat_depth"}
ARGS_DEFAULTED: set[str] = set()  # not in the config: LightningDiTArgs' default


def test_every_architecture_field_has_one_source():
    fields = {f.name: f for f in dataclasses.fields(LightningDiTArgs)}
    sources = (ARGS_FROM_MODEL_BY_NAME, ARGS_DERIVED, ARGS_DEFAULTED)
    assert set().union(*sources) == set(fields) and sum(map(len, sources)) == len(fields)
    model_keys = {f.name for f in dataclasses.fields(config_module.ModelConfig)}
    assert ARGS_FROM_MODEL_BY_NAME <= model_keys and not ARGS_DEFAULTED & model_keys
    assert all(fields[name].default is not dataclasses.MISSING
               or fields[name].default_factory is not dataclasses.MISSING for name in ARGS_DEFAULTED)


def test_model_args_takes_shared_fields_by_name_and_derives_the_rest():
    base = load_config(DATA / "sfd_tiny.yaml").model
    flags = [name for name in ARGS_FROM_MODEL_BY_NAME if isinstance(getattr(base, name), bool)]
    flipped = [f"model.{name}={str(not getattr(base, name)).lower()}" for name in flags]
    config = load_config(DATA / "sfd_tiny.yaml", [*flipped, "model.mlp_ratio=2.0", "model.repa_projector_dim=32",
                                                  "model.class_dropout_prob=0.25", "model.in_chans=40"])
    args = config_module.model_args(config)
    for name in ARGS_FROM_MODEL_BY_NAME:
        assert getattr(config.model, name) != getattr(base, name)  # every shared field was changed ...
        assert getattr(args, name) == getattr(config.model, name)  # ... and reaches the network
    defaults = {f.name: f.default for f in dataclasses.fields(LightningDiTArgs)}
    assert all(getattr(args, name) == defaults[name] for name in ARGS_DEFAULTED)
    assert (args.input_size, args.num_classes, args.semantic_first, args.depth, args.hidden_size, args.num_heads,
            args.patch_size, args.repa_target_dim, args.repa_feat_depth) == (16, 1000, True, 3, 64, 2, 1, 768, 2)


def test_a_field_shared_by_name_flows_through_and_a_network_only_field_keeps_its_default(monkeypatch):
    extra = [("fused_everything", bool, dataclasses.field(default=False))]
    args_type = dataclasses.make_dataclass("Args", extra, bases=(LightningDiTArgs,), frozen=True)
    model_type = dataclasses.make_dataclass("Model", extra, bases=(config_module.ModelConfig,))
    monkeypatch.setattr(config_module, "LightningDiTArgs", args_type)
    config = load_config(DATA / "sfd_tiny.yaml")
    assert config_module.model_args(config).fused_everything is False  # ModelConfig has no such key
    config.model = model_type(**dataclasses.asdict(config.model), fused_everything=True)
    assert config_module.model_args(config).fused_everything is True


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  use_qknorm: true\n  dropout_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: model.dropout_rate"):
        load_config(unknown)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"empty.yaml: the file is empty"):
        load_config(empty)
    typed = tmp_path / "typed.yaml"
    typed.write_text("train:\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"train.max_steps"):
        load_config(typed)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(DATA / "sfd_tiny.yaml", ["sample.cfg_scale=2.5"])
    save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == config
    assert not list((tmp_path / "run").glob("*.tmp"))


INERT_VALUES = {"train.ckpt": "some.pt", "train.load_ckpt": "some.pt", "train.use_checkpoint": "false",
                "transport.loss_weight": "velocity", "transport.sample_eps": "0.001", "transport.train_eps": "0.001",
                "sample.likelihood": "true"}


def test_every_inert_release_key_has_a_test_value():
    assert set(INERT_VALUES) == set(INERT_RELEASE_KEYS)


@pytest.mark.parametrize("key", sorted(INERT_RELEASE_KEYS))
def test_inert_release_keys_warn_once_naming_the_key(key, monkeypatch):
    monkeypatch.setattr(config_module, "_warned_keys", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", InertSettingWarning)
        release_value = INERT_RELEASE_KEYS[key][0]
        load_config(None, [f"{key}={'null' if release_value is None else str(release_value).lower()}"])  # silent
    with pytest.warns(InertSettingWarning, match=f"{key}=.* has no effect") as caught:
        load_config(None, [f"{key}={INERT_VALUES[key]}"])
        load_config(None, [f"{key}={INERT_VALUES[key]}"])  # once per process
    assert len(caught) == 1 and len(str(caught[0].message).splitlines()) == 1
