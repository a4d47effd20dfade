"""edgepack's runtime on Raspberry Pi-class hardware: emulated Pi 4 / Pi 5 (qemu-user), real boards
over SSH, Android phones over adb. See device_tests/README.md."""
