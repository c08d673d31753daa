"""Training recipes as small Python files (as big_vision's configs): each defines
`get_config() -> TrainConfig` and, when it needs its own data, `DATA` (the arguments of
`see3d dataset`). `python -m see3d_jax.train --config see3d_jax/configs/demo.py ...` or
`--config demo` load them (`see3d_jax.train_config.load_config`)."""
