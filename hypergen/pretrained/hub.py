"""The Hugging Face Hub, through ``huggingface_hub``: is it reachable, resolve a repo id to a local snapshot (the
cache first), upload a folder. Every failure is one line; an unreachable hub fails at once (a 3 s connection
probe, or none at all with ``HF_HUB_OFFLINE=1``) instead of after huggingface_hub's retries.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import HypergenError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_reachable(timeout: float = 3.0) -> bool:
    """False under ``HF_HUB_OFFLINE``, or when the hub's host does not accept a connection within ``timeout``."""
    if hub_offline():
        return False
    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or ""
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_repo_id(name: str) -> bool:
    """``owner/name`` (what the hub calls a repo id), as opposed to a local path."""
    return bool(_REPO_ID.fullmatch(name)) and not name.startswith((".", "~"))


def _unreachable(what: str) -> str:
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else "no network access to the Hugging Face Hub from here"
    return f"{what}: cannot reach the Hugging Face Hub ({reason})"


def require_hub(what: str, consequence: str) -> None:
    """Raise one line (``what``: cannot reach the hub (why); ``consequence``) unless the hub is reachable."""
    if not hub_reachable():
        raise HypergenError(f"{_unreachable(what)}; {consequence}")


def check_repo_id(repo_id: str, what: str) -> None:
    if not isinstance(repo_id, str) or not looks_like_repo_id(repo_id):
        raise HypergenError(f"{what}: {repo_id!r} is not a repo id; expected 'owner/name'")


def snapshot(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None,
             token: str | bool | None = None, where: str = "from_pretrained") -> Path:
    """The local folder of ``repo_id`` at ``revision`` (default: main): from the cache when it is there, else
    downloaded into it. Unreachable and not cached: one line, at once."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cache = str(cache_dir) if cache_dir is not None else None
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass  # not (completely) in the cache
    if not hub_reachable():
        at = f" at revision {revision!r}" if revision else ""
        raise HypergenError(f"{_unreachable(where)} and {repo_id!r}{at} is not in the local cache; download it "
                            "elsewhere (huggingface-cli download) and pass its folder instead")
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, token=token))
    except RepositoryNotFoundError:
        raise HypergenError(f"{where}: {repo_id!r} is not a repository on the Hugging Face Hub (or it is private "
                            "and no token was given)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise HypergenError(f"{where}: cannot download {repo_id!r}: {str(exc).splitlines()[0]}") from None


def upload_folder(folder: Path, repo_id: str, private: bool | None = None, token: str | None = None,
                  commit_message: str = "Upload hypernetwork with hypergen", revision: str | None = None) -> str:
    """Create ``repo_id`` (a model repo) if needed and upload ``folder`` as one commit; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id, "push_to_hub")
    require_hub("push_to_hub", "nothing was uploaded (save_pretrained writes the same folder locally; upload it "
                "later with huggingface-cli upload)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message, revision=revision)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise HypergenError(f"push_to_hub: uploading to {repo_id!r} failed: {str(exc).splitlines()[0]}") from None
    return str(getattr(info, "commit_url", info))
