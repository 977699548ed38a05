from worldpm.cli import main

main()
