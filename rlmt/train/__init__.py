"""Training stages: warm-start SFT, GRPO and on-policy DPO on TRL (PPO lives beside them).

One module per stage, each with one entry function (``train_sft``, ``train_grpo``, ``train_dpo``)
that reads files and writes a model or checkpoint directory; ``checkpoints`` owns the on-disk
layout and resume, ``callbacks`` the MLflow logging shared by every trainer.
"""
