//! Entry point of the twinrig sync board on a Raspberry Pi Pico.
//!
//! Everything interesting is in the `twinrig-firmware` library: `Board` programs the RP2040 and
//! implements the HAL, `Device` is the Harp device, `capture_edges` is the interrupt handler's
//! body. This file only wires them to the Cortex-M runtime.
//!
//! Not built on the machine this was written on (no `thumbv6m-none-eabi` standard library
//! there); see `../README.md` for how to build and flash it.
#![no_std]
#![no_main]

use cortex_m_rt::{entry, exception};
use panic_halt as _;

use twinrig_firmware::board::edges::EdgeQueue;
use twinrig_firmware::board::mmio::Mmio;
use twinrig_firmware::board::rp2040::{capture_edges, pins, regs, Board};
use twinrig_firmware::device::DeviceConfig;
use twinrig_firmware::{Device, Hal};

/// Second-stage bootloader for the Pico's W25Q080 flash, placed in the first 256 bytes of
/// flash by `memory.x`.
#[link_section = ".boot2"]
#[used]
pub static BOOT2_FIRMWARE: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

/// Edges captured by the GPIO interrupt, drained by the main loop. 256 slots hold 25 ms of a
/// treadmill encoder at 10 k edges/s, far longer than one main-loop pass.
static EDGES: EdgeQueue<256> = EdgeQueue::new();

#[entry]
fn main() -> ! {
    let mut board = Board::new(Mmio);
    if board.init().is_err() {
        // No clock, no UART: nothing can be reported. Reset and try again.
        twinrig_firmware::board::mmio::system_reset();
    }
    let mut device = Device::with_config(board, DeviceConfig::default());

    // The idle levels of the encoder lines establish the quadrature state, and the photodiode's
    // idle level keeps its first real flip from being mistaken for a repeat.
    let levels = device.hal().gpio_in();
    let high = |pin: u8| levels & (1 << pin) != 0;
    device.on_encoder(high(pins::ENCODER_A), high(pins::ENCODER_B));
    let now = device.hal().now_us();
    device.on_photodiode_edge_at(high(pins::PHOTODIODE), now);

    loop {
        Board::service(&mut device, &EDGES);
    }
}

/// Every interrupt without its own handler lands here; the only one enabled is IO_IRQ_BANK0.
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == regs::IO_IRQ_BANK0 as i16 {
        capture_edges(&mut Mmio, &EDGES);
    }
}
