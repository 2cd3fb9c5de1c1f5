"""Job files (issue 16): seed 002's examples, SkyPilot's forms of each field, errors that
name the field and line, hostile texts refused quickly, and round trips of random files."""

from __future__ import annotations

import io
import json
import re
import string
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from support.thorough import examples

from control_plane.jobfile import JobFileError, ParsedJob, parse_job
from events.jobs import rank_command
from events.types import JobResources, JobSpec

GIB = 1 << 30


def parse(text: str, **kwargs: Any) -> ParsedJob:
    return parse_job(text, default_container="hakuriver-base", **kwargs)


def refused(text: str, **kwargs: Any) -> JobFileError:
    with pytest.raises(JobFileError) as err:
        parse(text, **kwargs)
    return err.value


# -- seed 002's examples -------------------------------------------------------------------

QUICK_START = """\
name: my-training-job
num_nodes: 1

resources:
  cpus: "2"
  memory: "4Gi"
  image_id: "python:3.11-slim"

setup: |
  pip install numpy pandas

run: |
  python train.py
"""

DISTRIBUTED = """\
name: distributed-training
num_nodes: 4

resources:
  cpus: "8"
  memory: "16Gi"
  accelerators: "2"
  image_id: "nvcr.io/nvidia/pytorch:23.10-py3"

envs:
  MASTER_ADDR: "master-service"
  MASTER_PORT: "29500"

run: |
  python -m torch.distributed.launch \\
    --nproc_per_node=2 \\
    --nnodes=$NUM_NODES \\
    --node_rank=$NODE_RANK \\
    train_distributed.py
"""

DATA_PROCESSING = """\
name: data-processing
resources:
  cpus: "4"
  memory: "8Gi"
  image_id: "python:3.11"

setup: |
  pip install pandas numpy

run: |
  python process_data.py
"""

GPU_TRAINING = """\
name: gpu-training
resources:
  cpus: "8"
  memory: "32Gi"
  accelerators: "2"
  image_id: "nvidia/cuda:12.1.0-runtime-ubuntu22.04"

setup: |
  pip install torch torchvision

run: |
  python train_model.py --gpu
"""

WITH_VOLUMES = """\
name: training-with-data
resources:
  cpus: "4"
  memory: "16Gi"
  image_id: "python:3.11"

volumes:
  /data: training-data
  /output: model-checkpoints

envs:
  DATA_PATH: "/data"
  OUTPUT_PATH: "/output"

run: |
  python train.py --data $DATA_PATH --output $OUTPUT_PATH
"""


def test_the_seeds_quick_start_example() -> None:
    parsed = parse(QUICK_START)
    assert parsed.spec == JobSpec(
        name="my-training-job",
        num_nodes=1,
        resources=JobResources(cpus="2", memory="4Gi", image_id="python:3.11-slim"),
        setup="pip install numpy pandas\n",
        run="python train.py\n",
        cores=2,
        memory_bytes=4 * GIB,
        container="python:3.11-slim",
    )
    assert parsed.ignored == {} and parsed.warnings == []


def test_the_seeds_multi_node_example() -> None:
    spec = parse(DISTRIBUTED).spec
    assert spec.name == "distributed-training"
    assert spec.num_nodes == 4
    assert (spec.cores, spec.memory_bytes) == (8, 16 * GIB)
    assert (spec.gpu_count, spec.gpu_model) == (2, None)  # a bare count: any model
    assert spec.resources.accelerators == "2"
    assert spec.container == "nvcr.io/nvidia/pytorch:23.10-py3"
    assert spec.envs == {"MASTER_ADDR": "master-service", "MASTER_PORT": "29500"}
    assert spec.run.startswith("python -m torch.distributed.launch \\\n")
    assert "--node_rank=$NODE_RANK" in spec.run


@pytest.mark.parametrize(
    ("text", "cores", "memory", "gpus", "container"),
    [
        (DATA_PROCESSING, 4, 8 * GIB, 0, "python:3.11"),
        (GPU_TRAINING, 8, 32 * GIB, 2, "nvidia/cuda:12.1.0-runtime-ubuntu22.04"),
        (WITH_VOLUMES, 4, 16 * GIB, 0, "python:3.11"),
    ],
)
def test_the_seeds_examples(text: str, cores: int, memory: int, gpus: int, container: str) -> None:
    spec = parse(text).spec
    assert (spec.cores, spec.memory_bytes, spec.gpu_count, spec.container) == (
        cores,
        memory,
        gpus,
        container,
    )
    assert spec.setup is None or spec.setup.startswith("pip install")


def test_the_seeds_volume_example_mounts_both_volumes() -> None:
    spec = parse(WITH_VOLUMES).spec
    assert spec.volumes == {"/data": "training-data", "/output": "model-checkpoints"}
    assert spec.envs == {"DATA_PATH": "/data", "OUTPUT_PATH": "/output"}


@pytest.mark.parametrize(
    "fragment",
    [
        # The seed's reference snippets, each completed with the one required field.
        'resources:\n  cpus: "2"\n  memory: "4Gi"\n  accelerators: "1"\n'
        '  image_id: "python:3.13-slim"\n',
        'envs:\n  BATCH_SIZE: "32"\n  EPOCHS: "100"\n  MODEL_PATH: "/data/models"\n',
        "volumes:\n  /data: training-data\n  /checkpoints: model-checkpoints\n",
        'setup: |\n  pip install torch numpy\n  echo "Setup completed"\n',
    ],
)
def test_the_seeds_reference_snippets(fragment: str) -> None:
    spec = parse(fragment + "run: |\n  python train.py --epochs $EPOCHS\n").spec
    assert spec.run == "python train.py --epochs $EPOCHS\n"
    assert spec.container == ("python:3.13-slim" if "image_id" in fragment else "hakuriver-base")


def test_a_spec_makes_a_rank_command() -> None:
    # The spec's setup and run are what the rank script is given, untouched.
    spec = parse(QUICK_START).spec
    command, args = rank_command(spec.setup, spec.run)
    assert command == "/bin/sh"
    assert args[-2:] == ("pip install numpy pandas\n", "python train.py\n")


# -- each accepted form --------------------------------------------------------------------


def resources_of(block: str) -> JobSpec:
    return parse(f"resources:\n{block}\nrun: echo hi\n").spec


@pytest.mark.parametrize(
    ("value", "text", "cores"),
    [
        ("4", "4", 4),
        ('"4"', "4", 4),
        ('"4+"', "4+", 4),
        ("2.5", "2.5", 3),
        ('"500m"', "500m", 1),
        ('"1500m"', "1500m", 2),
        ("0.1", "0.1", 1),
        ("64", "64", 64),
    ],
)
def test_cpus_forms(value: str, text: str, cores: int) -> None:
    spec = resources_of(f"  cpus: {value}")
    assert (spec.resources.cpus, spec.cores) == (text, cores)


@pytest.mark.parametrize(
    ("value", "text", "size"),
    [
        ("32", "32", 32 * GIB),  # a bare number is GiB, as SkyPilot counts
        ('"32+"', "32+", 32 * GIB),
        ("0.5", "0.5", GIB // 2),
        ('"64GB"', "64GB", 64 * 10**9),
        ('"4Gi"', "4Gi", 4 * GIB),
        ('"512Mi"', "512Mi", 512 << 20),
        ('"8G"', "8G", 8 * 10**9),
        ('"16Gi+"', "16Gi+", 16 * GIB),
    ],
)
def test_memory_forms(value: str, text: str, size: int) -> None:
    spec = resources_of(f"  memory: {value}")
    assert (spec.resources.memory, spec.memory_bytes) == (text, size)


@pytest.mark.parametrize(
    ("value", "text", "count", "model"),
    [
        ('"V100:2"', "V100:2", 2, "V100"),
        ("V100", "V100:1", 1, "V100"),
        ('"2"', "2", 2, None),
        ("2", "2", 2, None),
        ("{V100: 2}", "V100:2", 2, "V100"),
        ("{A100-80GB: 8}", "A100-80GB:8", 8, "A100-80GB"),
        ("{H100: null}", "H100:1", 1, "H100"),
        ("[H100:4]", "H100:4", 4, "H100"),
    ],
)
def test_accelerators_forms(value: str, text: str, count: int, model: str | None) -> None:
    spec = resources_of(f"  accelerators: {value}")
    assert (spec.resources.accelerators, spec.gpu_count, spec.gpu_model) == (text, count, model)


@pytest.mark.parametrize(
    ("value", "container"),
    [
        ("docker:ubuntu", "ubuntu:latest"),  # a tag makes it an image to the agent
        ("docker:ubuntu:22.04", "ubuntu:22.04"),
        ("docker:localhost:5000/team/train", "localhost:5000/team/train:latest"),
        ("docker:busybox@sha256:" + "a" * 64, "busybox@sha256:" + "a" * 64),
        ("python:3.11-slim", "python:3.11-slim"),
        ("my-env", "my-env"),  # a bare name: a HakuRiver environment
        ("NULL", None),  # a plain process
        ("null-env", "null-env"),
    ],
)
def test_image_id_forms(value: str, container: str | None) -> None:
    spec = resources_of(f'  image_id: "{value}"')
    assert spec.resources.image_id == value
    assert spec.container == container


def test_without_image_id_the_hosts_default_container() -> None:
    assert parse_job("run: x\n", default_container="hakuriver-base").spec.container == (
        "hakuriver-base"
    )
    assert parse_job("run: x\n", default_container="NULL").spec.container is None
    assert parse_job("run: x\n").spec.container is None
    # Written and empty (an unquoted NULL is YAML's null): no container.
    for empty in ("", " NULL", " null", " ~"):
        text = f"resources:\n  image_id:{empty}\nrun: x\n"
        spec = parse_job(text, default_container="e").spec
        assert (spec.container, spec.resources.image_id) == (None, "NULL")


def test_seed_ignored_fields_are_reported_and_kept() -> None:
    parsed = parse(
        "resources:\n  instance_type: p3.2xlarge\n  use_spot: true\n  disk_size: 256\n"
        "  ports: [8080, 8081]\nrun: x\n"
    )
    assert parsed.ignored == {
        "resources.instance_type": "p3.2xlarge",
        "resources.use_spot": "true",
        "resources.disk_size": "256",
        "resources.ports": "[8080, 8081]",
    }
    assert parsed.spec.resources.ignored == {
        "instance_type": "p3.2xlarge",
        "use_spot": "true",
        "disk_size": "256",
        "ports": "[8080, 8081]",
    }
    assert parsed.warnings == []  # the seed says these are ignored: nothing to warn about


def test_skypilots_cloud_fields_are_ignored_with_a_warning() -> None:
    parsed = parse(
        "resources:\n  cloud: aws\n  region: us-east-1\n  job_recovery: FAILOVER\nrun: x\n"
    )
    assert parsed.ignored == {
        "resources.cloud": "aws",
        "resources.region": "us-east-1",
        "resources.job_recovery": "FAILOVER",
    }
    assert len(parsed.warnings) == 3
    assert parsed.warnings[0].startswith("resources.cloud: ignored")
    assert "restart" in parsed.warnings[2]


def test_num_nodes_name_and_workdir() -> None:
    spec = parse("name: train.v2_a\nnum_nodes: 3\nworkdir: ~/my-project\nrun: x\n").spec
    assert (spec.name, spec.num_nodes, spec.workdir) == ("train.v2_a", 3, "~/my-project")
    assert parse("run: x\n").spec.num_nodes == 1
    assert parse('num_nodes: "2"\nrun: x\n').spec.num_nodes == 2
    assert parse("name: a\nrun: x\n", name="b").spec.name == "b"
    assert parse("run: x\n").spec.name is None


def test_envs_are_text_and_env_fills_and_overrides_them() -> None:
    spec = parse(
        "envs:\n  A: 1\n  B: 1.5\n  C: true\n  D: null\n  E: keep\n  F: 2024-01-02\nrun: x\n",
        env={"D": "given", "E": "changed", "NEW": "added"},
    ).spec
    # SkyPilot's rule: str() of the YAML value (true is "True"); quote to keep it as written.
    assert spec.envs == {
        "A": "1",
        "B": "1.5",
        "C": "True",
        "D": "given",
        "E": "changed",
        "F": "2024-01-02",
        "NEW": "added",
    }


def test_volume_paths_are_normalised() -> None:
    spec = parse("resources:\n  image_id: e\nvolumes:\n  /data/: v1\n  /a//b: v-2\nrun: x\n").spec
    assert spec.volumes == {"/data": "v1", "/a/b": "v-2"}


def test_an_empty_setup_is_none_and_run_is_kept_verbatim() -> None:
    spec = parse("setup: ''\nrun: |\n  echo a\n  echo b\n").spec
    assert spec.setup is None
    assert spec.run == "echo a\necho b\n"


# -- malformed files: the field path and the line ------------------------------------------

MALFORMED = [
    (
        "resources:\n  cpus: 4\n  memory: 4Gx\nrun: x\n",
        "resources.memory",
        3,
        "'4Gx' is not a size",
    ),
    ("resources:\n  memory: -4\nrun: x\n", "resources.memory", 2, "is not a size"),
    ("resources:\n  memory: 0\nrun: x\n", "resources.memory", 2, "no memory"),
    ("resources:\n  memory: 0.5B\nrun: x\n", "resources.memory", 2, "whole number of bytes"),
    ("resources:\n  cpus: four\nrun: x\n", "resources.cpus", 2, "not a number of CPUs"),
    ("resources:\n  cpus: 0\nrun: x\n", "resources.cpus", 2, "no CPU"),
    ("resources:\n  cpus: true\nrun: x\n", "resources.cpus", 2, "not a number of CPUs"),
    ("resources:\n  cpus: 99999\nrun: x\n", "resources.cpus", 2, "more than"),
    ("resources:\n  accelerators: V100:0.5\nrun: x\n", "resources.accelerators", 2, "whole"),
    ("resources:\n  accelerators: V100:0\nrun: x\n", "resources.accelerators", 2, "1 to"),
    (
        "resources:\n  accelerators: [V100:1, A100:1]\nrun: x\n",
        "resources.accelerators",
        2,
        "alternatives",
    ),
    (
        "resources:\n  accelerators: {V100: 1, A100: 1}\nrun: x\n",
        "resources.accelerators",
        2,
        "alternatives",
    ),
    ("resources:\n  accelerators: 'V 100:1'\nrun: x\n", "resources.accelerators", 2, "model"),
    ("resources:\n  image_id: Bad_Env!\nrun: x\n", "resources.image_id", 2, "environment name"),
    ("resources:\n  image_id: 'docker:'\nrun: x\n", "resources.image_id", 2, "image reference"),
    ("resources:\n  image_id: {us-east-1: ami-1}\nrun: x\n", "resources.image_id", 2, "mapping"),
    ("resources:\n  cpu: 4\nrun: x\n", "resources.cpu", 2, "did you mean 'cpus'"),
    ("resources:\n  any_of: []\nrun: x\n", "resources.any_of", 2, "alternatives"),
    ("resources: 4\nrun: x\n", "resources", 1, "must be a mapping"),
    ("name: x\n\nrnu: x\n", "rnu", 3, "did you mean 'run'"),
    ("run: x\nsecrets:\n  HF_TOKEN: null\n", "secrets", 2, "event log"),
    ("run: x\nfile_mounts:\n  /a: b\n", "file_mounts", 2, "volumes"),
    ("run: x\nconfig: {}\n", "config", 2, "no meaning"),
    ("run: x\nservice: {}\n", "service", 2, "batch jobs"),
    ("name: x\n", "run", None, "required"),
    ("run: '  '\n", "run", 1, "required"),
    ("run:\n  - a\n", "run", 2, "as text"),
    ("setup: 4\nrun: x\n", "setup", 1, "as text"),
    ("num_nodes: 0\nrun: x\n", "num_nodes", 1, "between 1 and"),
    ("num_nodes: 10000\nrun: x\n", "num_nodes", 1, "between 1 and"),
    ("num_nodes: 1.5\nrun: x\n", "num_nodes", 1, "whole number"),
    ("num_nodes: true\nrun: x\n", "num_nodes", 1, "whole number"),
    ("name: 'a b'\nrun: x\n", "name", 1, "not a job name"),
    ("name: 12\nrun: x\n", "name", 1, "not a job name"),
    ("workdir: {url: https://x}\nrun: x\n", "workdir", 1, "git repository"),
    ("workdir: ''\nrun: x\n", "workdir", 1, "not a folder"),
    ("run: x\nenvs:\n  A: 1\n  B:\n", "envs.B", 4, "--env B=VALUE"),
    ("run: x\nenvs:\n  1A: x\n", "envs", 3, "not a variable name"),
    ("run: x\nenvs:\n  A: [1]\n", "envs.A", 3, "not a list"),
    ("run: x\nenvs:\n  NODE_RANK: 3\n", "envs.NODE_RANK", 3, "set by HakuRiver"),
    ("run: x\nenvs: [A]\n", "envs", 2, "mapping"),
    ("run: x\nvolumes:\n  data: v\n", "volumes.data", 3, "absolute"),
    ("run: x\nvolumes:\n  /: v\n", "volumes./", 3, "root"),
    ("run: x\nvolumes:\n  /hakuriver/x: v\n", "volumes./hakuriver/x", 3, "HakuRiver's own"),
    ("run: x\nvolumes:\n  /shared: v\n", "volumes./shared", 3, "HakuRiver's own"),
    ("run: x\nvolumes:\n  /a/../b: v\n", "volumes./a/../b", 3, "plain container path"),
    ("run: x\nvolumes:\n  /a: v\n  /a/: w\n", "volumes./a/", 4, "already mounted"),
    ("run: x\nvolumes:\n  /a: Bad_Name\n", "volumes./a", 3, "not a volume name"),
    ("resources:\n  image_id: NULL\nvolumes:\n  /a: v\nrun: x\n", "volumes", 3, "containers"),
    ("run: x\nrun: y\n", "yaml", 2, "duplicate key"),
    ("run: [x\n", "yaml", 2, "not valid YAML"),
    ("- run: x\n", "yaml", 1, "top level must be a mapping"),
    ("\n\n'just text'\n", "yaml", 3, "top level must be a mapping"),
    ("", "yaml", None, "empty"),
    ("# nothing\n", "yaml", None, "empty"),
]


@pytest.mark.parametrize(("text", "field", "line", "why"), MALFORMED)
def test_malformed_files_name_the_field_and_line(
    text: str, field: str, line: int | None, why: str
) -> None:
    error = refused(text)
    assert error.field == field
    assert error.line == line
    where = f"{field} (line {line}): " if line is not None else f"{field}: "
    assert error.message.startswith(where)
    assert why in error.message
    assert str(error) == error.message  # says where once
    assert error.status == 400


def test_bad_env_and_name_arguments_are_refused() -> None:
    assert refused("run: x\n", env={"A-B": "1"}).field == "env"
    assert refused("run: x\n", env={"NUM_NODES": "1"}).field == "env.NUM_NODES"
    assert refused("run: x\n", env={"A": "a\0b"}).field == "env.A"
    assert refused("run: x\n", name="no spaces").field == "name"


# -- hostile texts ------------------------------------------------------------------------

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)
)

HOSTILE = [
    ("huge", "run: " + "x" * (300 << 10) + "\n", "bytes"),
    ("billion laughs", BILLION_LAUGHS, "anchor"),
    ("an alias alone", "run: *a\n", "alias"),
    ("deep flow nesting", "run: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested"),
    ("deep block nesting", "".join(" " * i + "a:\n" for i in range(200)) + "run: x\n", "nested"),
    ("many nodes", "envs:\n" + "".join(f"  K{i}: {i}\n" for i in range(12_000)), "nodes"),
    ("two documents", "run: x\n---\nrun: y\n", "one job per file"),
    ("a python tag", "run: !!python/object:os.system ls\n", "tag"),
    ("a custom tag", "run: !shell ls\n", "tag"),
    ("binary", bytes(range(256)).decode("latin-1"), "not valid YAML"),
    ("a NUL", "run: a\0b\n", "not valid YAML"),
    ("a lone surrogate", "run: \udc80\n", "not valid YAML"),
    ("a huge integer", "num_nodes: " + "9" * 5000 + "\nrun: x\n", ""),
]


@pytest.mark.parametrize(("text", "why"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_texts_are_refused_quickly(text: str, why: str) -> None:
    began = time.monotonic()
    error = refused(text)
    assert time.monotonic() - began < 5  # well under; the point is: no blow-up
    assert why in error.message


# -- properties ---------------------------------------------------------------------------

_TEXT = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")) | st.just("\n"),
    max_size=40,
)
_MODELS = ("V100", "A100-80GB", "H100", "RTX4090")
_IMAGES: dict[str, str | None] = {
    "docker:python:3.11-slim": "python:3.11-slim",
    "docker:ubuntu": "ubuntu:latest",
    "nvcr.io/nvidia/pytorch:23.10-py3": "nvcr.io/nvidia/pytorch:23.10-py3",
    "my-env": "my-env",
    "NULL": None,
}


@st.composite
def job_files(draw: st.DrawFn) -> tuple[dict[str, Any], JobSpec]:
    """A random valid job file (as data, to be dumped as YAML) and the spec it means."""
    data: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    written: dict[str, Any] = {}
    spec: dict[str, Any] = {}
    name = draw(st.none() | st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True))
    if name is not None:
        data["name"] = name
    nodes = draw(st.integers(1, 8))
    if nodes > 1 or draw(st.booleans()):
        data["num_nodes"] = nodes
    if draw(st.booleans()):
        n = draw(st.integers(1, 64))
        form = draw(st.sampled_from(["int", "str", "plus", "milli", "half"]))
        value: Any = {
            "int": n,
            "str": str(n),
            "plus": f"{n}+",
            "milli": f"{n * 1000}m",
            "half": n - 0.5,
        }[form]
        resources["cpus"], written["cpus"], spec["cores"] = value, str(value), n
    if draw(st.booleans()):
        k = draw(st.integers(1, 512))
        value, size = draw(
            st.sampled_from(
                [
                    (k, k * GIB),
                    (f"{k}+", k * GIB),
                    (f"{k}Gi", k * GIB),
                    (f"{k}GB", k * 10**9),
                    (f"{k}Mi", k << 20),
                ]
            )
        )
        resources["memory"], written["memory"], spec["memory_bytes"] = value, str(value), size
    if draw(st.booleans()):
        count = draw(st.integers(1, 8))
        model = draw(st.none() | st.sampled_from(_MODELS))
        if model is None:
            value = draw(st.sampled_from([count, str(count)]))
        else:
            value = draw(st.sampled_from([f"{model}:{count}", {model: count}]))
        resources["accelerators"] = value
        written["accelerators"] = f"{model}:{count}" if model else str(count)
        spec["gpu_count"], spec["gpu_model"] = count, model
    image = draw(st.none() | st.sampled_from(sorted(_IMAGES)))
    if image is not None:
        resources["image_id"] = written["image_id"] = image
    spec["container"] = _IMAGES[image] if image is not None else "hakuriver-base"
    if resources:
        data["resources"] = resources
    envs = draw(
        st.dictionaries(
            st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True),
            _TEXT | st.integers(),
            max_size=4,
        )
    )
    envs = {k: v for k, v in envs.items() if k not in ("NODE_RANK", "NUM_NODES")}
    if envs:
        data["envs"] = envs
    if spec["container"] is not None:
        volumes = draw(
            st.dictionaries(
                st.from_regex(r"/[a-z]{1,8}(/[a-z0-9]{1,8})?", fullmatch=True),
                st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True),
                max_size=3,
            )
        )
        volumes = {
            k: v for k, v in volumes.items() if k.split("/")[1] not in ("shared", "hakuriver")
        }
        if volumes:
            data["volumes"] = volumes
    setup = draw(st.none() | _TEXT.filter(str.strip))
    if setup is not None:
        data["setup"] = setup
    data["run"] = draw(_TEXT.filter(str.strip))
    expected = JobSpec(
        name=name,
        num_nodes=nodes,
        resources=JobResources(**written),
        envs={k: str(v) for k, v in envs.items()},
        volumes=data.get("volumes", {}),
        setup=setup,
        run=data["run"],
        **spec,
    )
    return data, expected


def dump(data: dict[str, Any], style: str) -> str:
    """The file as YAML: block style with every scalar double-quoted (ruamel's dumper
    writes some plain scalars, like ``?0``, that its own parser refuses), or JSON (YAML's
    flow style, numbers left unquoted)."""
    if style == "json":
        return json.dumps(data, ensure_ascii=False)
    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.allow_unicode = True
    yaml.default_style = '"'
    yaml.default_flow_style = False
    yaml.dump(data, out)
    return out.getvalue()


@settings(
    max_examples=examples(60, 600), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(job_files(), st.sampled_from(["block", "json"]))
def test_random_job_files_parse_back_to_their_spec(
    case: tuple[dict[str, Any], JobSpec], style: str
) -> None:
    data, expected = case
    assert parse(dump(data, style)).spec == expected


@settings(max_examples=examples(150, 2000), deadline=None)
@given(st.text(alphabet=string.printable + "&*!{}[]:-|>'\"#%@`\u00e9\udc80\0", max_size=300))
def test_any_text_is_a_job_or_a_job_file_error(text: str) -> None:
    try:
        parsed = parse(text)
    except JobFileError as error:
        assert error.field and error.message.startswith(error.field)
    else:
        assert parsed.spec.run.strip()


def test_every_example_in_the_jobs_guide_parses() -> None:
    guide = (Path(__file__).parents[2] / "docs" / "jobs.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, flags=re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:
        spec = parse(block, env={"EPOCHS": "20"}).spec
        assert spec.run.strip()
    distributed = parse(blocks[-1], env={"EPOCHS": "20"}).spec
    assert (distributed.num_nodes, distributed.gpu_count, distributed.gpu_model) == (4, 2, "A100")
    assert distributed.workdir == "."
    assert 'MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n1)' in distributed.run


def test_a_spec_from_block_scalars_can_be_recorded() -> None:
    # ruamel gives `run: |` blocks as str subclasses msgspec cannot encode: the spec must
    # hold plain strings, or the host could not record the job (a 500).
    from events.codec import encode_event
    from events.types import JobSubmitted

    text = "name: b\nenvs:\n  A: |\n    x\nsetup: |\n  echo s\nrun: |\n  echo r\n"
    spec = parse_job(text).spec
    assert type(spec.run) is str and type(spec.setup) is str and type(spec.envs["A"]) is str
    encode_event(JobSubmitted(job_id="abcd1234", spec=spec, owner="u", rank_task_ids=("t",)))


@pytest.mark.parametrize(
    "text",
    ['run: "echo \\ud800"\n', 'setup: "\\ud800"\nrun: x\n', 'envs: {A: "\\udc80"}\nrun: x\n'],
)
def test_a_lone_surrogate_is_refused_not_a_500(text: str) -> None:
    # An escape can spell a lone surrogate, which no event can hold: a 400, not a 500.
    with pytest.raises(JobFileError) as caught:
        parse_job(text)
    assert caught.value.field == "yaml" and "surrogate" in caught.value.message
