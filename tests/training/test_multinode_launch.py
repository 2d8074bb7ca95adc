"""The launch files for several machines: the SLURM sbatch script and the Accelerate YAMLs."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from _tiny import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "recipes" / "launch" / "pretrain_17b.sbatch"
YAMLS = sorted((ROOT / "recipes" / "launch").glob("accelerate_*.yaml"))


def test_sbatch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    assert "#SBATCH --nodes=32" in text and "#SBATCH --gpus-per-node=8" in text and "srun" in text


@pytest.fixture
def fake_slurm(tmp_path):
    """A SLURM job's environment on 4 nodes x 8 GPUs, and an scontrol that expands its node list."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/bash\n[ "$1 $2 $3" = "show hostnames gpu[017-020]" ] || exit 1\n'
                        'printf "gpu017\\ngpu018\\ngpu019\\ngpu020\\n"\n')
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "GPUS_PER"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu[017-020]",
               SLURM_NNODES="4", SLURM_GPUS_ON_NODE="8", LAUNCH_DRY_RUN="1")
    return env


def dry_run(env, *args) -> tuple[dict, list[str]]:
    proc = subprocess.run(["bash", str(SBATCH), *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rdzv = dict(item.split("=", 1) for item in lines[0].removeprefix("rendezvous: ").split())
    command = shlex.split(lines[1].removeprefix("command: "))
    return rdzv, command


def test_rendezvous_comes_from_the_slurm_environment(fake_slurm):
    rdzv, command = dry_run(fake_slurm)
    assert rdzv == {"MASTER_ADDR": "gpu017", "MASTER_PORT": str(20000 + 4242 % 20000), "NNODES": "4",
                    "GPUS_PER_NODE": "8", "WORLD_SIZE": "32", "ENGINE": "zero3"}
    assert command[:2] == ["srun", "--ntasks-per-node=1"] and command[2] == "torchrun"
    flags = dict(zip(command[3:], command[4:]))
    assert flags["--nnodes"] == "4" and flags["--nproc_per_node"] == "8"
    assert flags["--rdzv-backend"] == "c10d" and flags["--rdzv-endpoint"] == "gpu017:24242"
    assert flags["--rdzv-id"] == "4242"


def test_engine_choice_and_extra_flags_reach_the_recipe(fake_slurm):
    rdzv, command = dry_run({**fake_slurm, "ENGINE": "fsdp2", "SLURM_GPUS_ON_NODE": "h100:4",
                             "MASTER_PORT": "31000"}, "--train.max_steps", "10")
    assert rdzv["ENGINE"] == "fsdp2" and rdzv["GPUS_PER_NODE"] == "4" and rdzv["WORLD_SIZE"] == "16"
    assert rdzv["MASTER_PORT"] == "31000"
    program = command[command.index("recipes/pretrain_nlg.py") + 1:]
    recipe = load_recipe("pretrain_nlg")
    from turing_models.training.config import parse_config

    cfg = parse_config(recipe.PretrainNLGConfig, program, family="nlg")  # every flag is a real key
    assert cfg.train.distributed == "fsdp2" and cfg.train.max_steps == 10 and cfg.resume == "auto"
    assert cfg.train.validate(int(rdzv["WORLD_SIZE"])) == 512 // 16  # the global batch holds: accumulation


def test_bad_engine_and_missing_job_are_refused(fake_slurm):
    bad = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, cwd=ROOT,
                         env={**fake_slurm, "ENGINE": "megatron"})
    assert bad.returncode == 2 and "ENGINE=megatron" in bad.stderr
    env = {k: v for k, v in fake_slurm.items() if k != "SLURM_JOB_ID"}
    missing = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert missing.returncode != 0 and "sbatch" in missing.stderr


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_accelerate_multi_machine_yaml(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_machines == 32 and config.num_processes == 32 * 8 and config.rdzv_backend == "c10d"
    assert config.mixed_precision == "bf16"
    if config.deepspeed_config:
        assert (ROOT / config.deepspeed_config["deepspeed_config_file"]).is_file()
    else:
        assert config.fsdp_config["fsdp_version"] == 2
    # the command in the file's header parses, and leaves the engine to the file
    line = next(line for line in path.read_text().splitlines() if "recipes/pretrain_nlg.py" in line)
    program = shlex.split(line.split("recipes/pretrain_nlg.py", 1)[1])
    from turing_models.training.config import parse_config

    cfg = parse_config(load_recipe("pretrain_nlg").PretrainNLGConfig, program, family="nlg")
    assert cfg.train.distributed == "none" and cfg.data.shards == "data_cache/web"
    assert len(YAMLS) == 2
