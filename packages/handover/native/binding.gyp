{
  "targets": [
    {
      "target_name": "handover",
      "sources": ["handover.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
