"""`python run.py prepare svhn --to DIR`: download the three official archives, check and extract them,
and build the caches with the default options, so that the first training run only loads."""

from __future__ import annotations

from pathlib import Path

import h5py

from attn.data.cache import say
from attn.data.svhn.cache import ensure_cache
from attn.errors import DataError

DEFAULT_URL = "http://ufldl.stanford.edu/housenumbers/"


def prepare_svhn(
    dest: str | Path,
    *,
    base_url: str = DEFAULT_URL,
    extra: bool = True,
    keep_archives: bool = False,
    timeout: float = 60.0,
) -> dict[str, int]:
    """Make ``dest`` an SVHN format 1 root: download ``<base_url>/{train,test,extra}.tar.gz``,
    extract them safely into ``dest/train`` etc., and build the caches with the default options
    (``data.image_size``, ``data.color``) in ``dest/attn-cache``. Returns the image count per folder.

    A folder already holding digitStruct.mat is left alone (nothing is downloaded for it); an archive
    already in ``dest`` is used as is; an interrupted download continues from its ``.part`` file.
    Archives are deleted after extraction unless ``keep_archives``.
    """
    from urllib.parse import urljoin

    from attn.config import SvhnData
    from attn.data.download import download, extract_tar

    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot create the folder ({exc.strerror}); choose another --to") from None
    folders = ["train", "test"] + (["extra"] if extra else [])
    base = base_url if base_url.endswith("/") else base_url + "/"
    for folder in folders:
        target = dest / folder
        if (target / "digitStruct.mat").is_file():
            say(f"svhn: {target} is there already; not downloading it")
            continue
        if target.exists():
            raise DataError(f"{target}: exists but holds no digitStruct.mat; move it away and run the command again")
        archive = dest / f"{folder}.tar.gz"
        url = urljoin(base, f"{folder}.tar.gz")
        if archive.is_file():
            say(f"svhn: using {archive}")
        else:
            say(f"svhn: downloading {url}")
            download(url, archive, timeout=timeout)
        extract_tar(archive, dest, folder, require=("digitStruct.mat",), delete_bad=True)
        if not keep_archives:
            archive.unlink()
    fields = SvhnData.model_fields
    size, color = fields["image_size"].default, fields["color"].default
    counts = {}
    for folder in folders:
        path = ensure_cache(dest / folder, dest / "attn-cache", image_size=size, color=color)
        with h5py.File(path, "r") as f:
            counts[folder] = int(f.attrs["num_records"])
    return counts
