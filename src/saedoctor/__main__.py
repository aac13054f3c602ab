from saedoctor.cli import main

main()
