import DPUCtlCLI

DPUCtl.main()
