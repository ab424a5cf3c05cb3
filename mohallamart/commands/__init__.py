"""The command line's groups, one module each: `register(subparsers)` adds the group's commands
and options, its handlers (`args -> exit code`) beside them. `mohallamart.cli` keeps the
top-level parser and `main()`."""
