"""Managed mode's settings, as a gunicorn config file gives them.

The seed's settings keep their names and defaults: healthcheck_bind (None
starts nothing), healthcheck_require_workers (1), healthcheck_directory
('': the current directory) and healthcheck_filename ('.gunicorn.worker.{}').
Three more are optional: healthcheck_reload_grace (seconds), notifyd_args
(further notifyd flags) and notifyd_binary.

Each setting becomes a notifyd flag, and the notifyd that is to run them
judges them (notifyd --check): its rules are written once, in notifyd, and
every mistake is reported at once, each as one line that names the setting.
What is checked here is only what notifyd cannot see: that a value has a
type that can become a flag, and that notifyd_args leaves managed mode's
own flags alone.

Standard library only. Nothing here runs at import.
"""

import os
import re

from ._process import check, find_binary

DEFAULT_REQUIRE = 1
DEFAULT_DIRECTORY = ''
DEFAULT_FILENAME = '.gunicorn.worker.{}'

# SETTING_OF is the seed setting each flag managed mode sets stands for, so
# that notifyd's lines name what the config file says.
SETTING_OF = {
    'bind': 'healthcheck_bind',
    'require': 'healthcheck_require_workers',
    'dir': 'healthcheck_directory',
    'filename': 'healthcheck_filename',
    'reload-grace': 'healthcheck_reload_grace',
}

# MANAGED_FLAGS are the notifyd flags managed mode sets itself, each with
# what sets it instead: a later flag would win over managed mode's, so
# notifyd_args must not name them.
MANAGED_FLAGS = {
    'exit-with': 'managed mode sets it to the master\'s pid, so that '
                 'notifyd never outlives the master',
    'socket': 'managed mode binds a private notify socket of its own',
    'bind': 'set healthcheck_bind instead',
    'require': 'set healthcheck_require_workers instead',
    'dir': 'set healthcheck_directory instead',
    'filename': 'set healthcheck_filename instead',
}


class Settings:
    """The settings notifyd runs with; equal settings need no restart."""

    __slots__ = ('bind', 'require', 'directory', 'filename', 'reload_grace',
                 'args', 'binary', 'queues')

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, values.get(name, ()))

    def _key(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return isinstance(other, Settings) and self._key() == other._key()

    def flags(self):
        """notifyd's flags for the settings, notifyd_args left out."""
        flags = []
        for name, value in (('bind', self.bind), ('require', self.require),
                            ('dir', self.directory),
                            ('filename', self.filename),
                            ('reload-grace', self.reload_grace)):
            if value is not None:
                flags += ['--' + name, value]
        for address in self.queues:
            flags += ['--listen-queue', address]
        return flags


def read(ns):
    """Return (settings, problems) for the config file's namespace ns:
    (None, []) when healthcheck_bind is None, and (None, [a line for each
    bad setting]) when any is bad."""
    if ns.get('healthcheck_bind') is None:
        return None, []
    problems = []
    settings = Settings(
        bind=str(ns['healthcheck_bind']),
        require=str(ns.get('healthcheck_require_workers', DEFAULT_REQUIRE)),
        directory=_directory(ns, problems),
        filename=str(ns.get('healthcheck_filename', DEFAULT_FILENAME)),
        reload_grace=_seconds(ns, 'healthcheck_reload_grace', problems),
        args=_args(ns, problems),
        binary=_binary(ns, problems),
    )
    for name, value in (('healthcheck_bind', settings.bind),
                        ('healthcheck_directory', settings.directory),
                        ('healthcheck_filename', settings.filename),
                        ('notifyd_args', ''.join(settings.args))):
        if value is not None and '\0' in value:
            # No command line can carry it.
            problems.append('%s: must not contain a NUL byte' % name)
            settings.binary = None
    if settings.binary is not None:
        try:
            lines = check(settings.binary, settings.flags()
                          + list(settings.args))
            problems += [_in_settings_words(line, settings) for line in lines]
        except OSError as err:
            problems.append('notifyd_binary %r: %s' % (settings.binary, err))
    if problems:
        return None, problems
    return settings, []


def _directory(ns, problems):
    directory = ns.get('healthcheck_directory', DEFAULT_DIRECTORY)
    try:
        return os.path.abspath(os.fspath(directory) or '.')
    except TypeError:
        problems.append('healthcheck_directory %r: must be a directory '
                        'path, or "" for the current directory' % (directory,))
        return None


def _seconds(ns, name, problems):
    # A number of seconds, as a duration notifyd reads: 2.5 is '2.5s'.
    value = ns.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append('%s %r: must be a number of seconds' % (name, value))
        return None
    return '%ss' % (format(value, 'f').rstrip('0').rstrip('.') or '0')


def _args(ns, problems):
    args = ns.get('notifyd_args') or []
    if (not isinstance(args, (list, tuple))
            or not all(isinstance(a, str) for a in args)):
        problems.append('notifyd_args %r: must be a list of strings, such as '
                        '["--log-level", "debug"]' % (args,))
        return ()
    for name in _flag_names(args):
        if name in MANAGED_FLAGS:
            problems.append('notifyd_args %r: --%s is managed mode\'s own: %s'
                            % (args, name, MANAGED_FLAGS[name]))
            return ()
    return tuple(args)


# _SWITCHES are notifyd's flags that take no value.
_SWITCHES = ('check', 'version', 'help', 'h')


def _flag_names(args):
    # The names of the flags in args, as Go's flag package reads them: -name
    # or --name, the value after "=" or in the next argument (but for
    # notifyd's switches); "--" or an argument that is no flag ends them.
    args = iter(args)
    for arg in args:
        if arg == '--' or not arg.startswith('-'):
            return
        name, eq, _ = arg.lstrip('-').partition('=')
        if not eq and name not in _SWITCHES:
            next(args, None)
        yield name


def _binary(ns, problems):
    binary = ns.get('notifyd_binary')
    if binary is not None and not isinstance(binary, str):
        problems.append('notifyd_binary %r: must be a path' % (binary,))
        return None
    try:
        return find_binary(binary)
    except LookupError as err:
        problems.append(str(err))
        return None


# _LINE is one of notifyd's lines about a value: the flag or variable it
# came from, the value as Go quotes it, and what is wrong with it.
_LINE = re.compile(r'(--[a-z-]+|NOTIFYD_[A-Z_]+) ("(?:[^"\\]|\\.)*")(: .*)\Z')
# _FLAG finds a flag's name in what notifyd says of a value.
_FLAG = re.compile(r'(?<![\w-])--([a-z-]+)')


def _in_settings_words(line, settings):
    """One of notifyd's lines about its flags, with each flag managed mode
    set from a setting called by that setting's name: '--require "x": ...'
    becomes 'healthcheck_require_workers "x": ...'. A line about a flag of
    notifyd_args says so; one about a variable is notifyd's as it is."""
    # The flags managed mode gave from a setting: flags() is name, value.
    given = {flag for flag in settings.flags()[::2]
             if flag[2:] in SETTING_OF}
    match = _LINE.match(line)
    if match is None or match.group(1) not in given:
        if match is not None and match.group(1).startswith('NOTIFYD_'):
            return line
        return 'notifyd_args: ' + line
    subject, value, what = match.groups()

    def setting(flag):
        name = '--' + flag.group(1)
        return SETTING_OF[flag.group(1)] if name in given else name

    return '%s %s%s' % (SETTING_OF[subject[2:]], value,
                        _FLAG.sub(setting, what))
