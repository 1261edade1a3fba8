"""The git side of the store: init, commit, restore, history.

Plumbing goes through the git binary via gitpython's ``repo.git`` (faster than
gitpython's pure-Python index for the many small files LanceDB writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import git

from .errors import StoreError

_IDENTITY = ("-c", "user.name=memos", "-c", "user.email=memos@localhost")


@dataclass
class Commit:
    sha: str
    when: datetime
    author: str
    message: str


class StoreRepo:
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self.repo = git.Repo(root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise StoreError(f"{root} is not a git repository") from None
        self.git = self.repo.git

    @classmethod
    def init(cls, root: Path) -> StoreRepo:
        git.Repo.init(root, initial_branch="main")
        return cls(root)

    @property
    def state_dir(self) -> Path:
        """Unversioned runtime state (lock, journal, access log) lives in .git/memos."""
        return Path(self.repo.git_dir) / "memos"

    def head(self) -> str | None:
        try:
            return self.repo.head.commit.hexsha
        except ValueError:  # no commit yet
            return None

    def dirty(self) -> bool:
        return bool(self.git.status("--porcelain", "--untracked-files=all"))

    def commit_all(self, message: str, author: str) -> str:
        """Stage everything and commit it as ``author``; returns the new sha."""
        self.git.add("-A")
        self.repo.git.execute(
            ["git", *_IDENTITY, "commit", "-q", "--no-verify", "--allow-empty",
             f"--author={author} <{author}@memos>", "-m", message]
        )
        return self.repo.head.commit.hexsha

    def restore(self) -> None:
        """Put the work tree back to HEAD: undo changes, drop new files."""
        stale = Path(self.repo.git_dir) / "index.lock"
        if stale.exists():  # left by a git killed mid-commit; we hold the store lock
            stale.unlink()
        if self.head() is not None:
            self.git.reset("-q", "--hard", "HEAD")
        self.git.clean("-fdq")

    def history(self, n: int = 20) -> list[Commit]:
        if self.head() is None:
            return []
        return [
            Commit(
                sha=c.hexsha,
                when=datetime.fromtimestamp(c.committed_date, tz=UTC),
                author=c.author.name or "",
                message=str(c.message).strip(),
            )
            for c in self.repo.iter_commits(max_count=n)
        ]

    def gc(self) -> None:
        """Pack loose objects and drop unreachable ones."""
        self.git.gc("-q", "--prune=now")
