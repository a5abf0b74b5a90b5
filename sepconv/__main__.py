from sepconv.cli import main

main()
