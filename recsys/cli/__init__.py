"""The `recsys` command line: one small module per subcommand, all taking the same settings."""
