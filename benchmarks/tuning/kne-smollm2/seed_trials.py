"""Seed the study with informed starting points (the shipped YAML, the authors' settings, and regularized
variants) before TPE takes over; the sampler still explores the whole space afterwards."""
import sys, optuna
sys.path.insert(0, "code")
from easyedit_kne.tuning.study import _storage
study = optuna.create_study(study_name="tune", storage=_storage("out2"), direction="maximize", load_if_exists=True)
base = dict(localization="shared", nullspace=False, kl_prompt_weight=0.0, kl_subject_weight=0.0)
seeds = [
    dict(base, target="mlp.up_proj:out", p=10.0, lr=1e-3, num_steps=80, t_loss=0.8, alpha=1.0, init="zero",
         optimizer="adam", stop_on="loss"),                                   # shipped smollm2-135m.yaml
    dict(base, target="mlp.up_proj:out", p=4.0, lr=5e-3, num_steps=100, t_loss=0.4, alpha=1.0, init="kaiming",
         optimizer="adamw", stop_on="loss"),                                  # the authors' settings
    dict(base, target="mlp.up_proj:out", p=10.0, lr=1e-3, num_steps=100, t_loss=0.8, alpha=1.0, init="zero",
         optimizer="adam", stop_on="accuracy"),
    dict(base, target="mlp.up_proj:out", p=10.0, lr=2e-3, num_steps=100, t_loss=0.8, alpha=1.0, init="zero",
         optimizer="adam", stop_on="accuracy", kl_prompt_weight=0.5, kl_subject_weight=0.5),
    dict(base, target="mlp.up_proj:out", p=5.0, lr=2e-3, num_steps=100, t_loss=0.8, alpha=1.0, init="zero",
         optimizer="adam", stop_on="accuracy", kl_subject_weight=2.0, nullspace=True),
]
if not study.trials:
    for s in seeds:
        study.enqueue_trial(s)
print(len(study.trials), "trials in the study")
