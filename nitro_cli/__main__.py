from nitro_cli.cli import main

main()
