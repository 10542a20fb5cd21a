from clonefleet.cli import main

main()
