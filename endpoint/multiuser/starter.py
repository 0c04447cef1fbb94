"""``fedcompute endpoint configure NAME --multi-user``: the starter files of a multi-user
endpoint, commented (config.yaml, user_config_template.yaml.j2, user_config_schema.json)."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

#: file written in the endpoint folder <- shipped template
FILES = {
    "config.yaml": "multiuser.yaml",
    "user_config_template.yaml.j2": "multiuser_user_config_template.yaml.j2",
    "user_config_schema.json": "multiuser_user_config_schema.json",
}


def write_starter_files(folder: Path, service_url: str | None, force: bool) -> list[Path]:
    """Write the files into ``folder``; existing ones are kept unless ``force`` (config.yaml
    is the caller's to check). Returns the files written."""
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for name, shipped in FILES.items():
        path = folder / name
        if path.exists() and not force and name != "config.yaml":
            continue
        text = (TEMPLATES / shipped).read_text()
        if name == "config.yaml" and service_url:
            text = f"service_url: {service_url}\n" + text
        path.write_text(text)
        written.append(path)
    return written


__all__ = ["FILES", "write_starter_files"]
