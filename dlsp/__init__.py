"""dlsp: the command-line entry point (`dlsp <subcommand>`)."""
