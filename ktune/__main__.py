from ktune.cli import entry

entry()
