"""The config schema, the typed configs, and that bad config fails before any job starts."""

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import snakemake_bin
from snakemake.utils import validate

from occfusion_core import config as C
from occfusion_core.body.configs import BodyAlignConfig
from occfusion_core.priors.configs import DiffusionModels

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "config.schema.yaml"


def schema_defs():
    return yaml.safe_load(SCHEMA.read_text())["$defs"]


@pytest.mark.parametrize("name,cls", [
    ("optimize", C.OptimizeConfig), ("render", C.RenderConfig), ("metrics", C.MetricsConfig),
    ("synthetic", C.SyntheticConfig), ("densify", C.DensifyConfig), ("sds", C.GuidanceConfig),
    ("complete_masks", C.MaskCompletionConfig), ("incontext_inpaint", C.InpaintConfig),
    ("refine", C.RefineConfig), ("body_refine", C.BodyRefineConfig), ("body_align", BodyAlignConfig),
    ("diffusion_models", DiffusionModels),
])
def test_schema_and_dataclasses_name_the_same_fields(name, cls):
    in_schema = set(schema_defs()[name]["properties"])
    in_class = {f.name for f in dataclasses.fields(cls)}
    assert in_schema == in_class


def test_default_config_is_valid_and_builds_typed_configs():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(cfg, str(SCHEMA))
    for variant in cfg["variants"].values():
        merged = C.merge(cfg.get("optimize"), variant.get("optimize"))
        C.from_dict(C.OptimizeConfig, merged)


def test_from_dict_names_unknown_key():
    with pytest.raises(C.ConfigError, match=r"variants\.v\.optimize: unknown key\(s\) 'lamda_mask'"):
        C.from_dict(C.OptimizeConfig, {"lamda_mask": 1.0}, "variants.v.optimize")
    with pytest.raises(C.ConfigError, match=r"optimize\.densify: unknown key\(s\) 'every'"):
        C.from_dict(C.OptimizeConfig, {"densify": {"every": 3}}, "optimize")


def test_merge_is_recursive():
    assert C.merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c["variants"]["gauhuman"]["optimize"].update(lamda_mask=1), "lamda_mask"),
    (lambda c: c["subjects"]["synth"]["synthetic"].update(occlusion="sometimes"), "sometimes"),
    (lambda c: c["subjects"]["synth"].update(sorce="x"), "sorce"),
    (lambda c: c["optimize"].update(iterations=0), "iterations"),
    (lambda c: c["subjects"]["synth"].update(variants=["nope"]), "nope"),
])
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, edit, needle):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    edit(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [snakemake_bin(), "-n", "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(bad),
         "--directory", str(tmp_path / "run"), "--workflow-profile", "none"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "results").exists()


@pytest.mark.parametrize("name,cls_path", [
    ("video", "occfusion_core.data.source_configs:VideoConfig"),
    ("zju", "occfusion_core.data.source_configs:ZJUConfig"),
    ("fit", "occfusion_core.data.source_configs:FitConfig"),
    ("simulated_occlusion", "occfusion_core.data.source_configs:SimulatedOcclusionConfig"),
])
def test_source_schemas_match_their_dataclasses(name, cls_path):
    import importlib

    module, cls = cls_path.split(":")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    assert set(schema_defs()[name]["properties"]) == fields


@dataclasses.dataclass
class _Inner:
    a: int = 1


@dataclasses.dataclass
class _Outer:
    inner: "_Inner" = dataclasses.field(default_factory=_Inner)
    maybe: "_Inner | None" = None
    plain: "dict | None" = None


def test_from_dict_nests_by_type_hints():
    """String (postponed) annotations, X | None included, nest without any table of names."""
    from occfusion_core.config import ConfigError, from_dict

    out = from_dict(_Outer, {"inner": {"a": 2}, "maybe": {"a": 3}, "plain": {"k": 1}})
    assert out.inner == _Inner(2) and out.maybe == _Inner(3) and out.plain == {"k": 1}
    with pytest.raises(ConfigError, match=r"config\.maybe: unknown key\(s\) 'b'"):
        from_dict(_Outer, {"maybe": {"b": 1}})


def test_a_nested_override_keeps_the_fields_own_defaults():
    """refine.densify defaults to enabled (stage 3 densifies); overriding one key keeps it so."""
    from occfusion_core.config import RefineConfig, from_dict

    default = RefineConfig().densify
    assert default.enabled
    cfg = from_dict(RefineConfig, {"densify": {"interval": 100}}, "refine")
    assert cfg.densify.enabled and cfg.densify.interval == 100
    assert cfg.densify.stop_iter == default.stop_iter and cfg.densify.max_gaussians == default.max_gaussians
