{
  "variables": {
    "have_nfqueue": "<!(test -f /usr/include/libnetfilter_queue/libnetfilter_queue.h && test -f /usr/include/libnfnetlink/libnfnetlink.h && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "gatehouse_native",
      "sources": ["srtp_openssl.c", "crc32c.c", "dfa.c", "prf.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_DISABLE_CPP_EXCEPTIONS"]
    }
  ],
  "conditions": [
    [
      "OS==\"linux\"",
      {
        "targets": [
          {
            "target_name": "gatehouse_fastpath",
            "sources": ["fastpath.c"],
            "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
          },
          {
            "target_name": "gatehouse_peercred",
            "sources": ["peercred.c"],
            "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
          },
          {
            "target_name": "gatehouse_reuseport",
            "sources": ["reuseport.c"],
            "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
          }
        ]
      }
    ],
    [
      "have_nfqueue==1",
      {
        "targets": [
          {
            "target_name": "gatehouse_nfqueue",
            "sources": ["nfqueue.c"],
            "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            "libraries": ["-lnetfilter_queue", "-lnfnetlink"]
          }
        ]
      }
    ]
  ]
}
