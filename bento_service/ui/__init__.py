"""The review page, served by the bento itself at ``/ui`` (:mod:`bento_service.ui.app`)."""

from bento_service.ui.app import PATH, PageData, attach, create_app

__all__ = ["PATH", "PageData", "attach", "create_app"]
