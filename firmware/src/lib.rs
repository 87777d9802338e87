//! Sync-board firmware for twinrig: the Harp 8-bit binary protocol and the device logic of the rig's
//! sync board. `no_std` so the same code runs on the board and, in tests, on the host.
#![no_std]
