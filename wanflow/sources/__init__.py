"""Model sources: ModelScope repositories, files shipped with wanflow, and local files or folders."""

from wanflow.sources.fetch import (
    ComponentStatus,
    ResolvedComponent,
    env_models_root,
    env_offline,
    modelscope_download,
    models_status,
    resolve_component,
)
from wanflow.sources.files import file_problem, match
from wanflow.sources.spec import Source, cache_root, parse_source

__all__ = ["ComponentStatus", "ResolvedComponent", "Source", "cache_root", "env_models_root", "env_offline",
           "file_problem", "match", "modelscope_download", "models_status", "parse_source", "resolve_component"]
