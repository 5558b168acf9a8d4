"""One module per `hotlora` subcommand; each parses options, calls the library and renders."""
