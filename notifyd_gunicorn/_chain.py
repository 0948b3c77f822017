"""How notifyd's hooks take their place in gunicorn's: a hook given as a
"module.function" string is resolved as gunicorn would, and a managed-mode
hook runs after the config file's own, whose errors reach gunicorn as they
would without notifyd, while notifyd's own are logged.

Standard library only. Nothing here runs at import.
"""

import importlib

# _MARK is set on the hooks start() makes, so that a second start() on the
# same namespace does not wrap them again.
_MARK = '_notifyd_managed_hook'


def _callable(name, hook):
    # gunicorn also accepts a hook given as 'package.module.function'.
    if hook is None or callable(hook):
        return hook
    if isinstance(hook, str) and '.' in hook:
        module, _, attr = hook.rpartition('.')
        return getattr(importlib.import_module(module), attr)
    raise TypeError('%s must be a callable or a "module.function" string, '
                    'not %r' % (name, hook))


def _chain(name, previous, hook):
    """Return the hook to set as name: previous (the file's own, which may
    raise, as it would without notifyd), then hook, whose errors are
    logged and never reach gunicorn."""
    previous = _callable(name, previous)

    def run(server, *worker):
        if previous is not None:
            previous(server, *worker)
        try:
            hook(server, *worker)
        except Exception:
            server.log.exception('notifyd: in the %s hook', name)

    # gunicorn checks each hook's arity, so the parameters are spelt out.
    if name == 'post_fork':
        def chained(server, worker):
            run(server, worker)
    elif name == 'nworkers_changed':
        def chained(server, new_value, old_value):
            run(server, new_value, old_value)
    else:
        def chained(server):
            run(server)
    setattr(chained, _MARK, True)
    chained._notifyd_previous = previous
    return chained
