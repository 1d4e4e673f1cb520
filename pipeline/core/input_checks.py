"""Names, store URIs and paths a config brings in, checked before any work starts.

Each check returns what is wrong, as the one line the user sees (the key, its value and the fix), or
None. config.validate raises them as ConfigError; the commands (report, promote, infer_model) call
the ones that concern their own keys.
"""

import pathlib
import re

# Database URIs SQLAlchemy opens for MLflow's store: dialect, then an optional +driver.
_DATABASE_SCHEME = re.compile(r"^(postgresql|mysql|mssql)(\+\w+)?$")
_STORE_URIS = "sqlite:///<folder>/mlflow.db, http(s)://host:port or a database URI such as postgresql+psycopg://..."


def name_problem(key: str, value, optional: bool = False) -> str | None:
    """A name (experiment, registered model, alias, run id) that is empty, blank or padded with spaces:
    MLflow would store it as given, or fail deep inside with a traceback."""
    if value is None and optional:
        return None
    text = "" if value is None else str(value)
    if not text.strip():
        fix = f"give a name, or {key}=null" if optional else "give a name"
        return f"{key}={text!r} is empty; {fix}"
    if text != text.strip():
        return f"{key}={text!r} has spaces around it; use {text.strip()!r}"
    return None


def uri_problem(key: str, uri) -> str | None:
    """A tracking URI of a scheme MLflow 3's store cannot use, or a SQLite path that is a folder."""
    text = "" if uri is None else str(uri)
    if not text.strip():
        return f"{key} is empty; use {_STORE_URIS}"
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme in ("", "file"):
        return (f"{key}={text} is a plain file store, which MLflow 3 refuses; use "
                "sqlite:///mlruns/mlflow.db (a file in that folder) or another of: " + _STORE_URIS)
    if scheme == "sqlite":
        path = text.removeprefix("sqlite:///")
        if path and pathlib.Path(path).is_dir():
            return f"{key}={text} names a folder; name the database file in it: sqlite:///{path.rstrip('/')}/mlflow.db"
        return None
    if scheme in ("http", "https") or _DATABASE_SCHEME.match(scheme):
        return None
    return f"{key}={text}: {scheme} is not a store scheme; use {_STORE_URIS}"


def folder_problem(key: str, path) -> str | None:
    """A path that must be a folder (or not exist yet, to be created) but is a file."""
    if path is None or not str(path).strip():
        return None
    if pathlib.Path(str(path)).expanduser().is_file():
        return f"{key}={path} is a file, not a folder; point {key} at a folder"
    return None


def problems(config) -> list[str]:
    """Every name, URI and path problem of a composed `python -m pipeline` config, in the order of its keys."""
    found = [
        name_problem("tracking.experiment", config.tracking.experiment),
        name_problem("tracking.registered_model", config.tracking.registered_model, optional=True),
        name_problem("train.resume", config.train.resume, optional=True),
        uri_problem("tracking.uri", config.tracking.uri),
        *(folder_problem(key, value) for key, value in (
            ("data.idx_dir", config.data.idx_dir), ("data.tfds_data_dir", config.data.tfds_data_dir),
            ("train.checkpoint_dir", config.train.checkpoint_dir), ("export.dir", config.export.dir),
            ("tracking.artifact_root", config.tracking.artifact_root))),
    ]
    return [problem for problem in found if problem]


def command_problems(config) -> list[str]:
    """The same checks for the keys a command (report, promote, infer_model) has: its store, and the sweep,
    model or aliases it is pointed at."""
    found = [uri_problem("tracking.uri", config.tracking.uri),
             name_problem("tracking.experiment", config.tracking.experiment)]
    if "sweep_id" in config:
        found.append(name_problem("sweep_id", config.sweep_id, optional=True))
    if "model_uri" in config:
        found.append(name_problem("model_uri", config.model_uri))
    if "aliases" in config:
        found += [name_problem(f"aliases.{role}", config.aliases[role]) for role in ("champion", "previous")]
        found.append(name_problem("tracking.registered_model", config.tracking.registered_model, optional=True))
    if "data" in config:
        found += [folder_problem("data.idx_dir", config.data.idx_dir),
                  folder_problem("data.tfds_data_dir", config.data.tfds_data_dir)]
    return [problem for problem in found if problem]
