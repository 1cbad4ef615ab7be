"""Moved to :mod:`mirrorla.commands.train` (and :mod:`mirrorla.commands.compare`); kept for old imports."""

from mirrorla.commands.compare import add_compare_args, compare_config_from_args
from mirrorla.commands.train import add_eval_args, add_train_args, config_from_args

__all__ = ["add_compare_args", "add_eval_args", "add_train_args", "compare_config_from_args", "config_from_args"]
