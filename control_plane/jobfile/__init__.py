"""Job files: SkyPilot-style YAML, parsed into a ``JobSpec`` (issue 16, docs/jobs.md).

``parse_job`` reads the file with ruamel.yaml's round-trip loader (it keeps every
key's and value's line) and checks each field, so that every refusal is a
``JobFileError`` naming the field's path and line: ``resources.memory (line 7): '4Gx' is
not a size; ...``. It accepts SkyPilot's forms of each field (``cpus: 4``, ``"4+"``,
``accelerators: {V100: 2}``, ...) and fills the ``JobSpec`` with what each rank asks for
on HakuRiver: cores, memory, GPUs and a container.

The text comes from any user: ``reading.py`` screens it before anything is built
from it (``job.py`` checks the fields, ``resources.py`` the ``resources`` section).
Whatever the text, the answer is a ``ParsedJob`` or a ``JobFileError``.

Pure: no I/O. The host parses the file it was sent; the CLI parses it first to find
the workdir it must pack.
"""

from __future__ import annotations

from control_plane.jobfile.job import ParsedJob, parse_job
from control_plane.jobfile.reading import JobFileError

__all__ = ["JobFileError", "ParsedJob", "parse_job"]
