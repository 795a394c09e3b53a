from bench.stage2.cli import main

raise SystemExit(main())
