"""`bergson magic --model INIT --dataset D --queries Q --output DIR`: MAGIC metagradients."""

from bergson_core.config.dynamics import MagicConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "magic", 62
HELP = ("MAGIC: exact gradient of each query's loss after training w.r.t. every document's (or token's) "
        "weight, by reverse-mode through the optimizer steps; writes DIR/topk.parquet (usable by `bergson "
        "validate`).")


def add_arguments(parser) -> None:
    add_model_arguments(parser, MagicConfig)


def run(args) -> int:
    from rich.console import Console

    s = run_magic(build_config(MagicConfig, args))
    Console().print(f"MAGIC over {s['steps']} steps ({s['checkpointing']} checkpointing, at most {s['peak_states']} "
                    f"states = {s['peak_state_bytes'] / 2**20:.1f} MiB, {s['forward_steps']} forward and "
                    f"{s['backward_steps']} backward steps, {s['compute_seconds']:.1f} s): {s['output']}")
    if s.get("token_output"):
        Console().print(f"per-token scores: {s['token_output']}")
    return 0


def run_magic(cfg: MagicConfig) -> dict:
    from bergson_core.methods.magic.run import load_recipe

    overlapped(lambda: load_recipe(cfg))  # validate inputs and load the model while Prefect starts
    from ..magic import magic

    return magic(cfg)
