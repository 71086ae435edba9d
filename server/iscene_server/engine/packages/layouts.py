"""The two official package layouts, read into network specs.

* TRELLIS (``microsoft/TRELLIS-image-large``): ``pipeline.json`` names each network's checkpoint stem;
  ``ckpts/<stem>.json`` holds ``{name, args}`` and ``ckpts/<stem>.safetensors`` the weights.
* I-Scene (``LuLing/IScene``): ``iscene_config.json`` names the TRELLIS base package, ``config.yml`` and two
  ``.pt`` checkpoints (the scene-context denoiser and the DINOv2 image conditioner). Every other network
  comes from the base package unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import ModelPackageError
from ..samplers import SamplerSettings
from .source import PackageSource

PIPELINE_JSON = "pipeline.json"
ISCENE_CONFIG_JSON = "iscene_config.json"
ISCENE_REQUIRED_KEYS = ("base_model_id", "config_file", "denoiser_checkpoint", "image_conditioner_checkpoint")
# Ships in TRELLIS-image-large but pipeline.json does not name it (generation never encodes); refine does.
SS_ENCODER_STEM = "ckpts/ss_enc_conv3d_16l8_fp16"
# Every network the server uses (the encoder is for refine); the TRELLIS base's own ss_flow is never needed.
PACKAGE_ROLES = ("denoiser", "image_conditioner", "sparse_structure_decoder", "sparse_structure_encoder",
                 "slat_flow_model", "slat_decoder_mesh", "slat_decoder_gs")
# The I-Scene inferencer overrides the base sampler params with these for both stages.
ISCENE_SAMPLER_OVERRIDES = {"steps": 25, "cfg_strength": 3.0}


@dataclass(frozen=True)
class NetworkSpec:
    """How to build one network: config class name and arguments, and where its weights are."""

    role: str
    name: str
    args: dict[str, Any]
    source: PackageSource
    weights: str

    def weights_path(self) -> Path:
        return self.source.path(self.weights)

    def describe(self) -> str:
        return f"{self.source.id}/{self.weights}"


def read_json(source: PackageSource, relpath: str) -> dict:
    path = source.path(relpath)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPackageError(f"cannot read {relpath} of model package {source.id}: {exc}",
                                "the file is damaged: download the package again") from None


def read_yaml(source: PackageSource, relpath: str) -> dict:
    path = source.path(relpath)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelPackageError(f"cannot read {relpath} of model package {source.id}: {exc}",
                                "the file is damaged: download the package again") from None
    if not isinstance(data, dict):
        raise ModelPackageError(f"{relpath} of model package {source.id} is not a YAML mapping",
                                "use the config.yml that ships with the package")
    return data


def _mapping(data: dict, path: str, where: str) -> dict:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ModelPackageError(f"{where} has no '{path}' entry", "the package config is incomplete or "
                                    "belongs to another model: use the files that ship with the package")
        node = node[part]
    return node


@dataclass
class TrellisPackage:
    source: PackageSource
    pipeline: dict = field(repr=False)

    @classmethod
    def open(cls, source: PackageSource) -> TrellisPackage:
        pipeline = read_json(source, PIPELINE_JSON)
        _mapping(pipeline, "args.models", f"{PIPELINE_JSON} of {source.id}")
        return cls(source, pipeline)

    @property
    def args(self) -> dict:
        return self.pipeline["args"]

    def checkpoint_stem(self, role: str) -> str:
        models = self.args["models"]
        if role in models:
            return models[role]
        if role == "sparse_structure_encoder":
            return SS_ENCODER_STEM
        raise ModelPackageError(f"{PIPELINE_JSON} of {self.source.id} names no '{role}' network",
                                "use a TRELLIS-image-large package")

    def network(self, role: str) -> NetworkSpec:
        stem = self.checkpoint_stem(role)
        config = read_json(self.source, f"{stem}.json")
        if "name" not in config or not isinstance(config.get("args"), dict):
            raise ModelPackageError(f"{stem}.json of {self.source.id} lacks 'name' or 'args'",
                                    "the package is damaged: download it again")
        return NetworkSpec(role, config["name"], dict(config["args"]), self.source, f"{stem}.safetensors")

    def sampler(self, which: str, **overrides) -> SamplerSettings:
        """``which`` is ``sparse_structure_sampler`` or ``slat_sampler``."""
        return SamplerSettings.from_pipeline_json(_mapping(self.pipeline, f"args.{which}", PIPELINE_JSON),
                                                  **overrides)


@dataclass
class IScenePackage:
    source: PackageSource
    config: dict
    model_config: dict = field(repr=False)
    base: TrellisPackage

    @classmethod
    def open(cls, spec: str | Path | PackageSource) -> IScenePackage:
        source = spec if isinstance(spec, PackageSource) else PackageSource(spec)
        if not source.has(ISCENE_CONFIG_JSON):
            hint = ("this is a TRELLIS package; I-Scene needs its own package (e.g. LuLing/IScene), which "
                    "names its TRELLIS base" if source.has(PIPELINE_JSON) else
                    "pass an I-Scene package folder or repo id (e.g. LuLing/IScene)")
            raise ModelPackageError(f"{source.id} is not an I-Scene model package (no {ISCENE_CONFIG_JSON})", hint)
        config = read_json(source, ISCENE_CONFIG_JSON)
        missing = [k for k in ISCENE_REQUIRED_KEYS if k not in config]
        if missing:
            raise ModelPackageError(f"{ISCENE_CONFIG_JSON} of {source.id} lacks {', '.join(missing)}",
                                    "use the iscene_config.json that ships with the package")
        model_config = read_yaml(source, config["config_file"])
        base = TrellisPackage.open(source.resolve(config["base_model_id"]))
        return cls(source, config, model_config, base)

    @property
    def model_name(self) -> str:
        return self.config.get("model_name", self.source.id)

    @property
    def exp_setting(self) -> str:
        return self.network("denoiser").args.get("exp_setting", "global")

    def network(self, role: str) -> NetworkSpec:
        """``denoiser`` and ``image_conditioner`` from this package, every other role from the base."""
        own = {"denoiser": "denoiser_checkpoint", "image_conditioner": "image_conditioner_checkpoint"}
        if role not in own:
            return self.base.network(role)
        entry = _mapping(self.model_config, f"models.{'img_conditioner' if role == 'image_conditioner' else role}",
                         f"{self.config['config_file']} of {self.source.id}")
        if "name" not in entry:
            raise ModelPackageError(f"{self.config['config_file']} of {self.source.id}: models.{role} has no name",
                                    "use the config.yml that ships with the package")
        return NetworkSpec(role, entry["name"], dict(entry.get("args") or {}), self.source, self.config[own[role]])

    def sampler(self, which: str, **overrides) -> SamplerSettings:
        """The base package's sampler with I-Scene's overrides, then the caller's (``None`` = keep)."""
        chosen = {k: v for k, v in overrides.items() if v is not None}
        return self.base.sampler(which, **{**ISCENE_SAMPLER_OVERRIDES, **chosen})

    def model_ids(self) -> dict[str, str]:
        return {"iscene": self.source.id, "trellis": self.base.source.id, "model_name": self.model_name}
