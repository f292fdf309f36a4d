from kubeha.cli.main import main

main()
