import pytest

from robustssl.config import ConfigError, from_dict, load_config, recipe_dir, to_dict
from robustssl.methods import METHODS


def test_recipes_load_and_overrides_apply():
    cfg = load_config("acl_fmnist_cpu", ["optim.lr=0.25", "eval.attacks=[pgd20]", "data.train_subset=null"])
    assert cfg.optim.lr == 0.25 and cfg.eval.attacks == ["pgd20"] and cfg.data.train_subset is None
    assert cfg.method.name == "acl" and cfg.model.dual_bn
    assert load_config("acl_cifar10").optim.name == "lars"
    assert from_dict(to_dict(cfg)) == cfg
    assert load_config("acl_fmnist_cpu", ["optim.lr=1e-3"]).optim.lr == 1e-3  # YAML 1.1 reads this as a string


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1", "valid keys here: optim.name, optim.lr"),
        ("optimizer.lr=1", "valid sections: data, model"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("method.name=byol", "choose one of: simclr, acl"),
        ("eval.attacks=[pgd20, fgsm]", "eval.attacks=.fgsm. is not valid; choose one of: pgd20, autoattack"),
        ("method.acl.tau=0", "method.acl.tau must be > 0"),
        ("method.acl.tau=.nan", "method.acl.tau: expected a finite number"),
        ("method.tau=0.5", "valid keys here: method.name, method.simclr.<key>, method.acl.<key>"),
        ("optim.lr.x=1", "must be section.key"),
        ("augment.crop_scale=[0.9, 0.1]", "augment.crop_scale"),
        ("coreset.fraction=0", "coreset.fraction"),
        ("train.epochs=1.5", "train.epochs: expected an integer"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_values_are_rejected_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("acl_fmnist_cpu", [override])


def test_unknown_yaml_key_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {arch: cnn, widht: 8}\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'.*model.width"):
        load_config(bad)
    with pytest.raises(ConfigError, match="bundled recipe: .*acl_fmnist_cpu"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("recipe", sorted(p.stem for p in recipe_dir().glob("*.yaml")))
def test_every_bundled_recipe_validates(recipe):
    cfg = load_config(recipe)
    # ACS's recipe names (issue #9) name the attack, not the method: PGD-AT with CRAIG, l_2 PGD-AT with GradMatch
    acs_names = {"pgd_craig_cifar10": "pgd_at", "l2_gradmatch_svhn": "pgd_at"}
    assert cfg.method.name in METHODS
    assert recipe.startswith(cfg.method.name + "_") or acs_names.get(recipe) == cfg.method.name, "a recipe is named after its method"
    if "rcs" in recipe:  # the RCS paper's fractions: 0.2 (CIFAR), 0.05 (ImageNet-32), 0.1 (ImageNet-1K SAT)
        assert cfg.coreset.selector == "rcs" and cfg.coreset.fraction in (0.05, 0.1, 0.2)
