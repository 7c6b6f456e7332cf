"""What every dnallm server shares (the Gradio app, the MCP server): the operator's start-up settings.

A server binds loopback unless the operator asks for more (`check_host`). A caller never names a path: genomes are
picked by file name from the operator's allow-list (`allowed_genomes`, `genome_path`), variant files by name from
the operator's folder (`allowed_folder`, `file_in_folder`), each checked to stay inside what was given at start.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from dnallm.genome import open_genome

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")  # what --genome-dir offers
VCF_SUFFIXES = (".vcf", ".vcf.gz")
COORDINATES_OFF = ("coordinate input is off: the server was started without a genome (--fasta or --genome-dir); "
                   "give the reference and variant sequences instead")


class StartError(ValueError):
    """A server setting refused at start (host, genome files, folders); the message says what to change."""


def check_host(host: str, allow_remote: bool = False) -> None:
    """Refuse to bind anything but loopback unless the operator asked for it: any caller who reaches the server
    can run the model on the server's hardware."""
    if allow_remote or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:  # a host name: it may resolve to any interface
        pass
    raise StartError(f"--host {host} is not a loopback address (127.0.0.1, ::1, localhost): the server would be "
                     "reachable from other machines. Pass --allow-remote to serve beyond loopback on purpose "
                     "(better behind a proxy with authentication).")


def allowed_genomes(fasta=(), genome_dir: str | Path | None = None) -> dict[str, Path]:
    """The genome FASTA files coordinate input may read (each `--fasta` file and each FASTA file directly in
    `--genome-dir`), by the name callers pick them with. Every file is opened now: pyfaidx writes its .fai/.gzi
    index on first open, so no request ever makes the server write a file, and a bad file fails at start."""
    paths = [Path(f).expanduser() for f in fasta]
    if genome_dir is not None:
        folder = Path(genome_dir).expanduser()
        if not folder.is_dir():
            raise StartError(f"--genome-dir {folder} is not a directory")
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(FASTA_SUFFIXES))
        if not found:
            raise StartError(f"--genome-dir {folder} has no FASTA file ({', '.join(FASTA_SUFFIXES)})")
        paths += found
    genomes: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise StartError(f"--fasta {path} does not exist")
        name, resolved = path.name, path.resolve()
        if genomes.get(name, resolved) != resolved:
            raise StartError(f"two genome FASTA files are named {name} ({genomes[name]}, {resolved}): callers "
                             "pick genomes by file name, so rename one")
        genomes[name] = resolved
    for name, path in genomes.items():
        try:
            open_genome(path)
        except (OSError, ValueError, ImportError) as e:
            raise StartError(f"genome {name}: {e}") from None
    return genomes


def genome_path(name: str | None, genomes: dict[str, Path]) -> Path:
    """The allow-listed FASTA a caller picked by `name` (None: the only one, when there is one).

    An unknown name is refused without repeating it: a caller can send any text there, and a path must not come
    back in a message as if the server had looked at it."""
    if not genomes:
        raise ValueError(COORDINATES_OFF)
    if name is None:
        if len(genomes) == 1:
            return next(iter(genomes.values()))
        raise ValueError(f"this server has several genomes: name one of {', '.join(genomes)}")
    if name not in genomes:
        raise ValueError(f"unknown genome: pick one of {', '.join(genomes)} (by file name; paths are not accepted)")
    return genomes[name]


def allowed_folder(folder: str | Path, option: str, create: bool = False) -> Path:
    """An operator's folder (`--vcf-dir`, `--jobs-dir`), resolved once at start; StartError if it is unusable."""
    path = Path(folder).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise StartError(f"{option} {path} is not a directory")
    return path.resolve()


_PLAIN_NAME = re.compile(r"[^/\\\x00]+")


def file_in_folder(name: str, folder: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """The file `name` directly inside the operator's `folder` (resolved), or ValueError.

    Only a plain file name is accepted: no separators, no `..`, no hidden file, and after resolving symbolic links
    the file must still sit directly in `folder`, so a link cannot lead a caller out of it."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(f"give the name of a {what} in the server's folder (a plain file name, no path)")
    if not name.lower().endswith(suffixes):
        raise ValueError(f"a {what} name ends in {' or '.join(suffixes)}")
    try:
        path = (folder / name).resolve()
    except (OSError, RuntimeError):  # a symbolic-link loop (RuntimeError before Python 3.13)
        raise ValueError(f"no {what} of that name in the server's folder") from None
    if path.parent != folder or not path.is_file():
        raise ValueError(f"no {what} of that name in the server's folder")
    return path


def files_in_folder(folder: Path | None, suffixes: tuple[str, ...]) -> list[str]:
    """The names `file_in_folder` accepts in `folder`, sorted ([] without a folder)."""
    names = []
    for p in sorted(folder.iterdir()) if folder is not None else ():
        try:
            file_in_folder(p.name, folder, suffixes, "file")
        except ValueError:
            continue
        names.append(p.name)
    return names


class FifoSlots:
    """At most `k` holders at once, handed out in arrival order: the request queue of a server that shares one
    model between threads. Unlike a semaphore, whose releasing thread can take its slot straight back (a batch job
    would starve the requests behind it), a slot goes to the oldest waiter."""

    def __init__(self, k: int):
        if k < 1:
            raise StartError(f"--concurrency must be >= 1, got {k}")
        self._cond = threading.Condition()
        self._free = k
        self._queue: deque[object] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextmanager
    def slot(self):
        """Wait for a slot (blocking the calling thread), hold it for the `with` body."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._free > 0 and self._queue[0] is ticket)
            self._queue.popleft()
            self._free -= 1
            self._cond.notify_all()  # with k > 1 the next in line may fit too
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()
