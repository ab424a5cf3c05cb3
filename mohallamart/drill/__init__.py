"""The fault drill (`mohallamart drill`): faults during a continuous load, each verified."""
