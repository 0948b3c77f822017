"""notifyd's Python side for any server: health and activity for its workers.

- notifyd.asgi: NotifydMiddleware, for ASGI applications under uvicorn
  (alone, with --workers, or as gunicorn's UvicornWorker);
- notifyd.celery: install(), for Celery's prefork pool processes.

gunicorn's own hooks are in notifyd_gunicorn, which reports through the
same client and Reporter as these modules. Every module finds the socket the
same way: an explicit argument, else $NOTIFYD_SOCKET, else
$RUNTIME_DIRECTORY/notify.sock, else ./notify.sock; '@name' is an abstract
socket, and $NOTIFY_SOCKET, systemd's, is never used.

Standard library only: nothing here imports the server it reports, and
nothing runs at import.
"""

from ._client import resolve_socket, send

__all__ = ['resolve_socket', 'send']
