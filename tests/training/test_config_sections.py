"""Config in sections, each field defined once (issue 13).

The sections of cxr_tf.training.config (runtime, data, optimisation, evaluation, model,
export) own their fields and help texts; an experiment's config combines sections, changes
defaults and adds its own fields. A field re-declared with a new help text is a second
definition: only the few whose meaning in that experiment really differs are allowed, each
with the reason.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest

import cxr_tf.experiments as ex
from cxr_tf.training import config as C
from cxr_tf.training.config import SECTIONS, build_parser, field_section

SECTION_CLASSES = [C.RuntimeConfig, C.DataConfig, C.OptimizerConfig, C.OptimisationConfig, C.EvaluationConfig,
                   C.NormConfig, C.HeadConfig, C.TrunkConfig, C.ModelConfig, C.ExportDirConfig, C.ExportConfig]

#: (experiment, field): why its help differs from the section's.
OWN_MEANING = {
    ("covid_ssl_compare", "data_dir"): "a data root holding several collections, default $CXR_DATA_DIR",
    ("deep_covid", "data_dir"): "a data root holding several collections, default $CXR_DATA_DIR",
    ("covid_ssl_compare", "weights"): "applies to the keras.applications models of the zoo only",
    ("covid_ssl_compare", "early_stopping"): "off by default: every model of the zoo gets the whole budget",
    ("train_preset", "augment"): "its own default policy, explained",
    ("train_preset", "export_name"): "named after the preset",
    ("ssl_pretrain", "max_images"): "subsamples the unlabelled pretraining pool, not a labelled set",
    ("ssl_pretrain", "fraction"): "subsamples the unlabelled pretraining pool, not a labelled set",
}


def _experiment_configs():
    out = {}
    for m in pkgutil.iter_modules(ex.__path__):
        mod = importlib.import_module(f"cxr_tf.experiments.{m.name}")
        for obj in vars(mod).values():  # the config whose experiment is this module (own or re-exported)
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__name__.endswith("Config")
                    and getattr(obj, "experiment", None) == m.name):
                out[m.name] = obj
    return out


def _own_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name in cls.__dict__.get("__annotations__", {})}


def test_sections_never_define_the_same_field_twice():
    owner = {}
    for sec in SECTION_CLASSES:
        for name in _own_fields(sec):
            assert name not in owner, f"{name} in {sec.__name__} and {owner[name]}"
            owner[name] = sec.__name__
    assert {"bn_momentum", "head", "dropout", "freeze_until", "lr", "batch_size", "precision",
            "saved_models_dir"} <= set(owner)


def test_experiments_add_fields_but_do_not_redefine_section_fields():
    configs = _experiment_configs()
    assert {"pneumonia_freeze", "freeze_depth", "augmentation_ablation", "batch_lr_grid", "train_preset",
            "covid_ssl_compare", "deep_covid", "chexpert_noisy", "ssl_pretrain", "ssl_finetune"} <= set(configs)
    redefined = []
    for exp, cls in configs.items():
        for name, f in _own_fields(cls).items():
            section = field_section(cls, name)
            if section == "experiment" or not f.metadata.get("help"):
                continue  # its own field, or only a new default
            base = next(b for b in reversed(cls.__mro__) if dataclasses.is_dataclass(b) and name in b.__dataclass_fields__)
            if f.metadata["help"] != base.__dataclass_fields__[name].metadata.get("help") and (exp, name) not in OWN_MEANING:
                redefined.append((exp, name))
    assert redefined == [], "give the section's field a new default only, or explain in OWN_MEANING"


@pytest.mark.parametrize("exp", ["pneumonia_freeze", "covid_ssl_compare", "chexpert_noisy"])
def test_help_groups_flags_by_section(exp):
    cls = _experiment_configs()[exp]
    groups = {g.title: [a.dest for a in g._group_actions] for g in build_parser(cls)._action_groups}
    for f in dataclasses.fields(cls):
        section = field_section(cls, f.name)
        title = f"{cls.experiment} options" if section == "experiment" else section
        assert f.name in groups[title], (f.name, title)
    assert set(SECTIONS) >= {field_section(cls, f.name) for f in dataclasses.fields(cls)}
