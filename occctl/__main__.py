from occctl.cli import main

main()
