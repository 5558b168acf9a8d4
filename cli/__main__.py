import sys

try:  # Ctrl-C before the command line is even imported: the same exit as later on
    from .app import main
except KeyboardInterrupt:
    sys.stdout.write("\nInterrupted by user\n")
    sys.exit(130)

main()
