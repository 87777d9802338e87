//! RP2040 (Raspberry Pi Pico) glue: clocks, UART0 at 1 Mbaud, GPIO, edge interrupts, and the
//! [`Hal`] implementation, written against a [`Bus`] so the register programming is exercised
//! by host tests. Register addresses and bit fields are from the RP2040 datasheet (chapter 2
//! "System Description" for RESETS, CLOCKS, XOSC, PLL, WATCHDOG, TIMER, IO/PADS_BANK0 and SIO;
//! chapter 4.2 for the PL011 UART); the sequences follow the pico-sdk's `clocks_init`,
//! `pll_init` and `uart_init`.
//!
//! Pin mapping (see also `firmware/README.md`):
//!
//! | GPIO | Pico pin | Function |
//! |------|----------|----------|
//! | 0    | 1        | UART0 TX → USB-serial adapter RX (Harp link, 1 Mbaud 8N1) |
//! | 1    | 2        | UART0 RX ← USB-serial adapter TX |
//! | 2    | 4        | FRAME_CLOCK input (rising edges) |
//! | 3    | 5        | PHOTODIODE input (both edges, comparator output) |
//! | 4    | 6        | ENCODER A (pull-up) |
//! | 5    | 7        | ENCODER B (pull-up) |
//! | 6    | 9        | DTR# from the adapter (low = controller connected; pull-up) |
//! | 10   | 14       | DO0 ACQ_START |
//! | 11   | 15       | DO1 STIM_ONSET |
//! | 12   | 16       | DO2 AUX0 |
//! | 13   | 17       | DO3 AUX1 |
//! | 25   | —        | on-board LED |

use crate::board::edges::{Edge, EdgeQueue};
use crate::hal::{Hal, ResetKind};
use crate::Device;

/// Access to the RP2040 address space: volatile MMIO on the chip, a register model in tests.
pub trait Bus {
    /// Reads a 32-bit register.
    fn read(&self, address: u32) -> u32;
    /// Writes a 32-bit register.
    fn write(&mut self, address: u32, value: u32);
    /// Resets the chip, into the USB bootloader for [`ResetKind::Bootloader`]. Does not return
    /// on hardware.
    fn system_reset(&mut self, kind: ResetKind);
}

/// GPIO assignments.
pub mod pins {
    /// UART0 TX.
    pub const UART_TX: u8 = 0;
    /// UART0 RX.
    pub const UART_RX: u8 = 1;
    /// Frame clock input.
    pub const FRAME_CLOCK: u8 = 2;
    /// Photodiode input.
    pub const PHOTODIODE: u8 = 3;
    /// Encoder channel A.
    pub const ENCODER_A: u8 = 4;
    /// Encoder channel B.
    pub const ENCODER_B: u8 = 5;
    /// DTR# of the USB-serial adapter (active low).
    pub const DTR_N: u8 = 6;
    /// Digital outputs DO0..DO3 (bit i of the `OUTPUT_*` registers drives `OUTPUTS[i]`).
    pub const OUTPUTS: [u8; 4] = [10, 11, 12, 13];
    /// On-board LED.
    pub const LED: u8 = 25;
    /// Inputs that raise interrupts: all in GPIO 0–7, so one `INTR0` register covers them.
    pub const EDGE_INPUTS: [u8; 4] = [FRAME_CLOCK, PHOTODIODE, ENCODER_A, ENCODER_B];
}

/// Register addresses and fields used here (RP2040 datasheet).
pub mod regs {
    /// Atomic-alias offsets of APB/AHB peripheral registers (datasheet 2.1.2).
    pub const ALIAS_XOR: u32 = 0x1000;
    /// Write-1-to-set alias.
    pub const ALIAS_SET: u32 = 0x2000;
    /// Write-1-to-clear alias.
    pub const ALIAS_CLR: u32 = 0x3000;

    /// RESETS block.
    pub const RESETS: u32 = 0x4000_C000;
    /// RESETS.RESET.
    pub const RESETS_RESET: u32 = RESETS;
    /// RESETS.RESET_DONE.
    pub const RESETS_DONE: u32 = RESETS + 0x8;
    /// Reset bit of IO_BANK0.
    pub const RESET_IO_BANK0: u32 = 1 << 5;
    /// Reset bit of PADS_BANK0.
    pub const RESET_PADS_BANK0: u32 = 1 << 8;
    /// Reset bit of PLL_SYS.
    pub const RESET_PLL_SYS: u32 = 1 << 12;
    /// Reset bit of TIMER.
    pub const RESET_TIMER: u32 = 1 << 21;
    /// Reset bit of UART0.
    pub const RESET_UART0: u32 = 1 << 22;

    /// CLOCKS block.
    pub const CLOCKS: u32 = 0x4000_8000;
    /// CLK_REF_CTRL (SRC bits 1:0: 0 ROSC, 2 XOSC).
    pub const CLK_REF_CTRL: u32 = CLOCKS + 0x30;
    /// CLK_REF_DIV.
    pub const CLK_REF_DIV: u32 = CLOCKS + 0x34;
    /// CLK_REF_SELECTED (one-hot of SRC).
    pub const CLK_REF_SELECTED: u32 = CLOCKS + 0x38;
    /// CLK_SYS_CTRL (SRC bit 0: 0 clk_ref, 1 aux; AUXSRC bits 7:5: 0 PLL_SYS).
    pub const CLK_SYS_CTRL: u32 = CLOCKS + 0x3C;
    /// CLK_SYS_DIV.
    pub const CLK_SYS_DIV: u32 = CLOCKS + 0x40;
    /// CLK_SYS_SELECTED (one-hot of SRC).
    pub const CLK_SYS_SELECTED: u32 = CLOCKS + 0x44;
    /// CLK_PERI_CTRL (ENABLE bit 11, AUXSRC bits 7:5: 0 clk_sys).
    pub const CLK_PERI_CTRL: u32 = CLOCKS + 0x48;
    /// CLK_SYS_RESUS_CTRL.
    pub const CLK_SYS_RESUS_CTRL: u32 = CLOCKS + 0x78;
    /// CLK_PERI_CTRL.ENABLE.
    pub const CLK_PERI_ENABLE: u32 = 1 << 11;

    /// XOSC block.
    pub const XOSC: u32 = 0x4002_4000;
    /// XOSC.CTRL.
    pub const XOSC_CTRL: u32 = XOSC;
    /// XOSC.STATUS (STABLE bit 31).
    pub const XOSC_STATUS: u32 = XOSC + 0x04;
    /// XOSC.STARTUP.
    pub const XOSC_STARTUP: u32 = XOSC + 0x0C;
    /// CTRL: FREQ_RANGE = 1_15MHZ.
    pub const XOSC_RANGE_1_15MHZ: u32 = 0xAA0;
    /// CTRL: ENABLE = magic 0xFAB in bits 23:12.
    pub const XOSC_ENABLE: u32 = 0xFAB << 12;
    /// STATUS.STABLE.
    pub const XOSC_STABLE: u32 = 1 << 31;

    /// PLL_SYS block.
    pub const PLL_SYS: u32 = 0x4002_8000;
    /// PLL.CS (REFDIV bits 5:0, LOCK bit 31).
    pub const PLL_CS: u32 = PLL_SYS;
    /// PLL.PWR (PD bit 0, DSMPD bit 2, POSTDIVPD bit 3, VCOPD bit 5).
    pub const PLL_PWR: u32 = PLL_SYS + 0x4;
    /// PLL.FBDIV_INT.
    pub const PLL_FBDIV_INT: u32 = PLL_SYS + 0x8;
    /// PLL.PRIM (POSTDIV1 bits 18:16, POSTDIV2 bits 14:12).
    pub const PLL_PRIM: u32 = PLL_SYS + 0xC;
    /// CS.LOCK.
    pub const PLL_LOCK: u32 = 1 << 31;
    /// PWR.PD.
    pub const PLL_PWR_PD: u32 = 1 << 0;
    /// PWR.POSTDIVPD.
    pub const PLL_PWR_POSTDIVPD: u32 = 1 << 3;
    /// PWR.VCOPD.
    pub const PLL_PWR_VCOPD: u32 = 1 << 5;

    /// WATCHDOG.TICK (CYCLES bits 8:0, ENABLE bit 9): the 1 µs tick of the TIMER.
    pub const WATCHDOG_TICK: u32 = 0x4005_8000 + 0x2C;
    /// WATCHDOG.TICK.ENABLE.
    pub const WATCHDOG_TICK_ENABLE: u32 = 1 << 9;

    /// TIMER block.
    pub const TIMER: u32 = 0x4005_4000;
    /// TIMER.TIMERAWH: raw high word, no latching side effects (safe from any context).
    pub const TIMER_RAWH: u32 = TIMER + 0x24;
    /// TIMER.TIMERAWL.
    pub const TIMER_RAWL: u32 = TIMER + 0x28;

    /// UART0 (PL011).
    pub const UART0: u32 = 0x4003_4000;
    /// UARTDR (data bits 7:0; FE 8, PE 9, BE 10, OE 11).
    pub const UART_DR: u32 = UART0;
    /// UARTFR (BUSY 3, RXFE 4, TXFF 5).
    pub const UART_FR: u32 = UART0 + 0x18;
    /// UARTIBRD.
    pub const UART_IBRD: u32 = UART0 + 0x24;
    /// UARTFBRD.
    pub const UART_FBRD: u32 = UART0 + 0x28;
    /// UARTLCR_H (FEN 4, WLEN 6:5).
    pub const UART_LCR_H: u32 = UART0 + 0x2C;
    /// UARTCR (UARTEN 0, TXE 8, RXE 9).
    pub const UART_CR: u32 = UART0 + 0x30;
    /// FR.RXFE.
    pub const UART_FR_RXFE: u32 = 1 << 4;
    /// FR.TXFF.
    pub const UART_FR_TXFF: u32 = 1 << 5;
    /// DR error bits (framing, parity, break, overrun).
    pub const UART_DR_ERRORS: u32 = 0xF00;
    /// LCR_H: 8 data bits, FIFOs on.
    pub const UART_LCR_H_8N1_FIFO: u32 = (3 << 5) | (1 << 4);
    /// CR: UART, TX and RX enabled.
    pub const UART_CR_ENABLE: u32 = 1 | (1 << 8) | (1 << 9);

    /// IO_BANK0 block.
    pub const IO_BANK0: u32 = 0x4001_4000;
    /// GPIOn_CTRL = IO_BANK0 + 4 + 8n (FUNCSEL bits 4:0).
    pub const fn gpio_ctrl(pin: u8) -> u32 {
        IO_BANK0 + 0x004 + 8 * pin as u32
    }
    /// FUNCSEL: UART.
    pub const FUNC_UART: u32 = 2;
    /// FUNCSEL: SIO (software-controlled GPIO).
    pub const FUNC_SIO: u32 = 5;
    /// INTR0: raw interrupt status of GPIO 0–7, four bits per pin; edges are write-1-to-clear.
    pub const INTR0: u32 = IO_BANK0 + 0x0F0;
    /// PROC0_INTE0: interrupt enables of GPIO 0–7 for core 0.
    pub const PROC0_INTE0: u32 = IO_BANK0 + 0x100;
    /// PROC0_INTS0: masked interrupt status of GPIO 0–7 for core 0.
    pub const PROC0_INTS0: u32 = IO_BANK0 + 0x120;
    /// Per-pin interrupt bits: edge low (falling).
    pub const EDGE_LOW: u32 = 0x4;
    /// Per-pin interrupt bits: edge high (rising).
    pub const EDGE_HIGH: u32 = 0x8;

    /// PADS_BANK0 block.
    pub const PADS_BANK0: u32 = 0x4001_C000;
    /// GPIOn pad control = PADS_BANK0 + 4 + 4n.
    pub const fn pad(pin: u8) -> u32 {
        PADS_BANK0 + 0x004 + 4 * pin as u32
    }
    /// Pad: input enable.
    pub const PAD_IE: u32 = 1 << 6;
    /// Pad: pull-up.
    pub const PAD_PUE: u32 = 1 << 3;
    /// Pad: pull-down.
    pub const PAD_PDE: u32 = 1 << 2;
    /// Pad: Schmitt trigger.
    pub const PAD_SCHMITT: u32 = 1 << 1;
    /// Pad: 4 mA drive (DRIVE bits 5:4 = 1).
    pub const PAD_DRIVE_4MA: u32 = 1 << 4;

    /// SIO block (single-cycle IO; no atomic aliases).
    pub const SIO: u32 = 0xD000_0000;
    /// SIO.GPIO_IN.
    pub const SIO_GPIO_IN: u32 = SIO + 0x004;
    /// SIO.GPIO_OUT.
    pub const SIO_GPIO_OUT: u32 = SIO + 0x010;
    /// SIO.GPIO_OUT_SET.
    pub const SIO_GPIO_OUT_SET: u32 = SIO + 0x014;
    /// SIO.GPIO_OUT_CLR.
    pub const SIO_GPIO_OUT_CLR: u32 = SIO + 0x018;
    /// SIO.GPIO_OE_SET.
    pub const SIO_GPIO_OE_SET: u32 = SIO + 0x024;

    /// NVIC interrupt set-enable register.
    pub const NVIC_ISER: u32 = 0xE000_E100;
    /// IRQ number of IO_IRQ_BANK0.
    pub const IO_IRQ_BANK0: u32 = 13;
}

use regs::*;

/// Crystal frequency of the Pico.
pub const XOSC_HZ: u32 = 12_000_000;
/// System clock after [`Board::init`]: 12 MHz × 125 / 6 / 2.
pub const SYS_HZ: u32 = 125_000_000;
/// The Harp serial rate.
pub const BAUD: u32 = 1_000_000;

/// Iterations a status poll may take before initialisation gives up. Each iteration is a bus
/// read, well under a microsecond; 10 M is seconds, far beyond any documented settle time.
const SPIN_LIMIT: u32 = 10_000_000;

/// Initialisation failure: a status bit never came up (dead crystal, PLL not locking, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitTimeout(pub &'static str);

impl core::fmt::Display for InitTimeout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RP2040 init timed out waiting for {}", self.0)
    }
}

/// PL011 divisors for `baud` from `clk_peri_hz` (pico-sdk `uart_set_baudrate`): a 16.6 fixed
/// point divisor of `clk / (16 × baud)`, rounded to the nearest 1/64.
pub const fn baud_divisors(clk_peri_hz: u32, baud: u32) -> (u32, u32) {
    let div = (8 * clk_peri_hz as u64 / baud as u64) as u32;
    let ibrd = div >> 7;
    if ibrd == 0 {
        (1, 0)
    } else if ibrd >= 65535 {
        (65535, 0)
    } else {
        (ibrd, (div & 0x7F).div_ceil(2))
    }
}

/// The board: owns the bus and the transmit staging buffer; implements [`Hal`].
#[derive(Debug)]
pub struct Board<B: Bus> {
    bus: B,
    /// Bytes taken from the device but not yet in the UART FIFO.
    tx: [u8; 64],
    tx_pos: usize,
    tx_len: usize,
    connected: Option<bool>,
    /// UART receive errors (framing, parity, break, overrun).
    pub uart_errors: u32,
}

impl<B: Bus> Board<B> {
    /// Wraps the bus; call [`init`](Self::init) before use.
    pub const fn new(bus: B) -> Self {
        Board {
            bus,
            tx: [0; 64],
            tx_pos: 0,
            tx_len: 0,
            connected: None,
            uart_errors: 0,
        }
    }

    /// The bus.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// The bus, mutably.
    pub fn bus_mut(&mut self) -> &mut B {
        &mut self.bus
    }

    fn modify(&mut self, address: u32, clear: u32, set: u32) {
        let value = (self.bus.read(address) & !clear) | set;
        self.bus.write(address, value);
    }

    fn wait(&self, address: u32, mask: u32, what: &'static str) -> Result<(), InitTimeout> {
        for _ in 0..SPIN_LIMIT {
            if self.bus.read(address) & mask == mask {
                return Ok(());
            }
        }
        Err(InitTimeout(what))
    }

    fn unreset(&mut self, mask: u32) -> Result<(), InitTimeout> {
        self.bus.write(RESETS_RESET + ALIAS_CLR, mask);
        self.wait(RESETS_DONE, mask, "RESET_DONE")
    }

    /// Brings up clocks (XOSC → PLL_SYS 125 MHz → clk_sys, clk_peri; clk_ref = XOSC), the 1 µs
    /// timer tick, UART0 at 1 Mbaud, the pins and the GPIO edge interrupt.
    pub fn init(&mut self) -> Result<(), InitTimeout> {
        self.init_clocks()?;
        self.unreset(RESET_IO_BANK0 | RESET_PADS_BANK0 | RESET_TIMER | RESET_UART0)?;
        self.init_uart();
        self.init_pins();
        Ok(())
    }

    fn init_clocks(&mut self) -> Result<(), InitTimeout> {
        self.bus.write(CLK_SYS_RESUS_CTRL, 0);

        // Crystal: 1-15 MHz range, ~1 ms start-up delay in units of 256 cycles.
        self.bus.write(XOSC_CTRL, XOSC_RANGE_1_15MHZ);
        self.bus.write(XOSC_STARTUP, (XOSC_HZ / 1000).div_ceil(256));
        self.bus.write(XOSC_CTRL + ALIAS_SET, XOSC_ENABLE);
        self.wait(XOSC_STATUS, XOSC_STABLE, "XOSC stable")?;

        // Move clk_sys and clk_ref off their auxiliary sources before touching the PLL.
        self.modify(CLK_SYS_CTRL, 0x1, 0);
        self.wait(CLK_SYS_SELECTED, 0x1, "clk_sys on clk_ref")?;
        self.modify(CLK_REF_CTRL, 0x3, 0);
        self.wait(CLK_REF_SELECTED, 0x1, "clk_ref on ROSC")?;

        // PLL_SYS: 12 MHz / 1 × 125 = 1500 MHz VCO, / 6 / 2 = 125 MHz.
        self.bus.write(RESETS_RESET + ALIAS_SET, RESET_PLL_SYS);
        self.unreset(RESET_PLL_SYS)?;
        self.bus.write(PLL_CS, 1);
        self.bus.write(PLL_FBDIV_INT, 125);
        self.bus
            .write(PLL_PWR + ALIAS_CLR, PLL_PWR_PD | PLL_PWR_VCOPD);
        self.wait(PLL_CS, PLL_LOCK, "PLL_SYS lock")?;
        self.bus.write(PLL_PRIM, (6 << 16) | (2 << 12));
        self.bus.write(PLL_PWR + ALIAS_CLR, PLL_PWR_POSTDIVPD);

        // clk_ref = XOSC / 1.
        self.bus.write(CLK_REF_DIV, 1 << 8);
        self.modify(CLK_REF_CTRL, 0x3, 2);
        self.wait(CLK_REF_SELECTED, 1 << 2, "clk_ref on XOSC")?;

        // clk_sys = PLL_SYS / 1: select the aux source first, then glitchlessly switch to aux.
        self.bus.write(CLK_SYS_DIV, 1 << 8);
        self.modify(CLK_SYS_CTRL, 0x7 << 5, 0);
        self.modify(CLK_SYS_CTRL, 0x1, 1);
        self.wait(CLK_SYS_SELECTED, 1 << 1, "clk_sys on PLL_SYS")?;

        // clk_peri = clk_sys (UART); must be stopped while its source changes.
        self.bus.write(CLK_PERI_CTRL, 0);
        self.bus.write(CLK_PERI_CTRL, CLK_PERI_ENABLE);

        // TIMER counts watchdog ticks: one per microsecond from 12 MHz clk_ref.
        self.bus
            .write(WATCHDOG_TICK, WATCHDOG_TICK_ENABLE | (XOSC_HZ / 1_000_000));
        Ok(())
    }

    fn init_uart(&mut self) {
        let (ibrd, fbrd) = baud_divisors(SYS_HZ, BAUD);
        self.bus.write(UART_IBRD, ibrd);
        self.bus.write(UART_FBRD, fbrd);
        // LCR_H must be written after the divisors: the write latches them.
        self.bus.write(UART_LCR_H, UART_LCR_H_8N1_FIFO);
        self.bus.write(UART_CR, UART_CR_ENABLE);
        self.bus.write(gpio_ctrl(pins::UART_TX), FUNC_UART);
        self.bus.write(gpio_ctrl(pins::UART_RX), FUNC_UART);
    }

    fn init_pins(&mut self) {
        let input = PAD_IE | PAD_SCHMITT;
        // Frame clock and photodiode are driven signals: a pull-down keeps an unplugged input
        // from producing phantom edges. Encoder and DTR# are open-collector: pull up.
        self.bus.write(pad(pins::FRAME_CLOCK), input | PAD_PDE);
        self.bus.write(pad(pins::PHOTODIODE), input | PAD_PDE);
        for pin in [pins::ENCODER_A, pins::ENCODER_B, pins::DTR_N] {
            self.bus.write(pad(pin), input | PAD_PUE);
        }
        for pin in [
            pins::FRAME_CLOCK,
            pins::PHOTODIODE,
            pins::ENCODER_A,
            pins::ENCODER_B,
            pins::DTR_N,
        ] {
            self.bus.write(gpio_ctrl(pin), FUNC_SIO);
        }

        let mut out_mask = 1u32 << pins::LED;
        for pin in pins::OUTPUTS.iter().chain(core::iter::once(&pins::LED)) {
            self.bus.write(pad(*pin), PAD_DRIVE_4MA);
            self.bus.write(gpio_ctrl(*pin), FUNC_SIO);
            out_mask |= 1 << *pin;
        }
        self.bus.write(SIO_GPIO_OUT_CLR, out_mask);
        self.bus.write(SIO_GPIO_OE_SET, out_mask);

        // Edge interrupts: rising edges of the frame clock, both edges of everything else.
        let mut enable = EDGE_HIGH << (4 * u32::from(pins::FRAME_CLOCK));
        for pin in [pins::PHOTODIODE, pins::ENCODER_A, pins::ENCODER_B] {
            enable |= (EDGE_HIGH | EDGE_LOW) << (4 * u32::from(pin));
        }
        // Edges latched while configuring are stale: clear them before enabling.
        self.bus.write(INTR0, enable);
        self.bus.write(PROC0_INTE0, enable);
        self.bus.write(NVIC_ISER, 1 << IO_IRQ_BANK0);
    }

    fn timer_us(&self) -> u64 {
        // TIMERAWH/L read without latching, so the high word is re-read to catch a carry.
        loop {
            let high = self.bus.read(TIMER_RAWH);
            let low = self.bus.read(TIMER_RAWL);
            if self.bus.read(TIMER_RAWH) == high {
                return (u64::from(high) << 32) | u64::from(low);
            }
        }
    }

    /// Current level of all GPIOs.
    pub fn gpio_in(&self) -> u32 {
        self.bus.read(SIO_GPIO_IN)
    }

    /// Drains the UART receive FIFO into `out`; returns the bytes read. Bytes with a framing,
    /// parity or break error are dropped and counted (the parser would reject them anyway).
    pub fn uart_read(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        for slot in out.iter_mut() {
            if self.bus.read(UART_FR) & UART_FR_RXFE != 0 {
                break;
            }
            let data = self.bus.read(UART_DR);
            if data & UART_DR_ERRORS != 0 {
                self.uart_errors = self.uart_errors.wrapping_add(1);
                // An overrun error still delivers a good byte; the others do not.
                if data & 0x700 != 0 {
                    continue;
                }
            }
            *slot = data as u8;
            n += 1;
        }
        n
    }

    /// Moves device output into the UART FIFO without ever blocking: bytes wait in a small
    /// staging buffer while the 32-byte hardware FIFO is full.
    fn uart_write(device: &mut Device<Self>) {
        loop {
            let board = device.hal_mut();
            if board.tx_pos == board.tx_len {
                let mut staged = [0u8; 64];
                let n = device.poll_tx(&mut staged);
                if n == 0 {
                    return;
                }
                let board = device.hal_mut();
                board.tx = staged;
                board.tx_pos = 0;
                board.tx_len = n;
                continue;
            }
            if board.bus.read(UART_FR) & UART_FR_TXFF != 0 {
                return;
            }
            let byte = board.tx.get(board.tx_pos).copied().unwrap_or(0);
            board.bus.write(UART_DR, u32::from(byte));
            board.tx_pos += 1;
        }
    }

    /// One pass of the main loop: controller bytes in, captured edges in, connection state,
    /// periodic work, output bytes out. Call it continuously; it never blocks.
    pub fn service<const Q: usize>(device: &mut Device<Self>, edges: &EdgeQueue<Q>) {
        let mut rx = [0u8; 32];
        let n = device.hal_mut().uart_read(&mut rx);
        if let Some(bytes) = rx.get(..n) {
            if !bytes.is_empty() {
                device.on_bytes(bytes);
            }
        }

        let now = device.hal().timer_us();
        while let Some(edge) = edges.pop() {
            dispatch_edge(device, &edge, now);
        }

        let connected = device.hal().gpio_in() & (1 << pins::DTR_N) == 0;
        if device.hal().connected != Some(connected) {
            device.hal_mut().connected = Some(connected);
            device.set_connected(connected);
        }

        device.tick();
        Self::uart_write(device);
    }
}

/// Feeds one captured edge to the device.
pub fn dispatch_edge<H: Hal>(device: &mut Device<H>, edge: &Edge, now_us: u64) {
    let t = edge.time_us(now_us);
    match edge.pin {
        pins::FRAME_CLOCK => device.on_frame_clock_edge_at(t),
        pins::PHOTODIODE => device.on_photodiode_edge_at(edge.level(pins::PHOTODIODE), t),
        pins::ENCODER_A | pins::ENCODER_B => {
            device.on_encoder(edge.level(pins::ENCODER_A), edge.level(pins::ENCODER_B));
        }
        _ => {}
    }
}

/// Body of the `IO_IRQ_BANK0` handler: timestamps and queues every pending edge, then
/// acknowledges it. Takes the bus by value-like reference so the handler can use its own
/// zero-sized MMIO bus without touching the `Device` the main loop owns.
pub fn capture_edges<B: Bus, const Q: usize>(bus: &mut B, edges: &EdgeQueue<Q>) {
    let t_us_low = bus.read(TIMER_RAWL);
    let status = bus.read(PROC0_INTS0);
    let levels = bus.read(SIO_GPIO_IN);
    // Acknowledge first: an edge arriving while we queue this one then raises a new interrupt
    // instead of being cleared unseen.
    bus.write(INTR0, status & 0xCCCC_CCCC);
    for pin in pins::EDGE_INPUTS {
        if status & ((EDGE_HIGH | EDGE_LOW) << (4 * u32::from(pin))) != 0 {
            edges.push(Edge {
                t_us_low,
                pin,
                levels: levels & 0x00FF_FFFF,
            });
        }
    }
}

impl<B: Bus> Hal for Board<B> {
    fn now_us(&self) -> u64 {
        self.timer_us()
    }

    fn write_outputs(&mut self, state: u8) {
        let (mut set, mut clear) = (0u32, 0u32);
        for (bit, pin) in pins::OUTPUTS.iter().enumerate() {
            if state & (1 << bit) != 0 {
                set |= 1 << *pin;
            } else {
                clear |= 1 << *pin;
            }
        }
        // Two single-cycle SIO writes: lines change within 8 ns of each other.
        self.bus.write(SIO_GPIO_OUT_SET, set);
        self.bus.write(SIO_GPIO_OUT_CLR, clear);
    }

    fn set_led(&mut self, on: bool) {
        let register = if on {
            SIO_GPIO_OUT_SET
        } else {
            SIO_GPIO_OUT_CLR
        };
        self.bus.write(register, 1 << pins::LED);
    }

    fn reset(&mut self, kind: ResetKind) {
        self.bus.system_reset(kind);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::harp::{ElementType, Message, MessageView, Parser};
    use std::cell::RefCell;
    use std::collections::{BTreeMap, VecDeque};
    use std::vec::Vec;

    /// A register file that behaves like the RP2040 where `Board` depends on it: atomic
    /// aliases, ready bits that follow their control registers, SIO set/clear registers, a
    /// settable timer and a UART with FIFOs.
    #[derive(Default)]
    struct FakeBus {
        regs: BTreeMap<u32, u32>,
        now_us: u64,
        /// Interior mutability because reading UARTDR pops the FIFO on the real chip too.
        rx: RefCell<VecDeque<u8>>,
        tx: Vec<u8>,
        tx_room: usize,
        resets: Vec<ResetKind>,
    }

    impl FakeBus {
        fn get(&self, a: u32) -> u32 {
            self.regs.get(&a).copied().unwrap_or(0)
        }
    }

    impl Bus for FakeBus {
        fn read(&self, a: u32) -> u32 {
            match a {
                RESETS_DONE => !self.get(RESETS_RESET),
                XOSC_STATUS => {
                    if self.get(XOSC_CTRL) & XOSC_ENABLE == XOSC_ENABLE {
                        XOSC_STABLE
                    } else {
                        0
                    }
                }
                PLL_CS => {
                    let powered = self.get(PLL_PWR) & (PLL_PWR_PD | PLL_PWR_VCOPD) == 0;
                    self.get(PLL_CS) | if powered { PLL_LOCK } else { 0 }
                }
                CLK_REF_SELECTED => 1 << (self.get(CLK_REF_CTRL) & 3),
                CLK_SYS_SELECTED => 1 << (self.get(CLK_SYS_CTRL) & 1),
                TIMER_RAWH => (self.now_us >> 32) as u32,
                TIMER_RAWL => self.now_us as u32,
                UART_FR => {
                    let mut fr = 0;
                    if self.rx.borrow().is_empty() {
                        fr |= UART_FR_RXFE;
                    }
                    if self.tx_room == 0 {
                        fr |= UART_FR_TXFF;
                    }
                    fr
                }
                UART_DR => self.rx.borrow_mut().pop_front().map_or(0, u32::from),
                _ => self.get(a),
            }
        }

        fn write(&mut self, a: u32, v: u32) {
            let peripheral = (0x4000_0000..0x5000_0000).contains(&a);
            match a {
                UART_DR => {
                    self.tx.push(v as u8);
                    self.tx_room -= 1;
                }
                SIO_GPIO_OUT_SET => *self.regs.entry(SIO_GPIO_OUT).or_default() |= v,
                SIO_GPIO_OUT_CLR => *self.regs.entry(SIO_GPIO_OUT).or_default() &= !v,
                _ if peripheral && a & 0x3000 == ALIAS_SET => {
                    *self.regs.entry(a & !0x3000).or_default() |= v
                }
                _ if peripheral && a & 0x3000 == ALIAS_CLR => {
                    *self.regs.entry(a & !0x3000).or_default() &= !v
                }
                _ if peripheral && a & 0x3000 == ALIAS_XOR => {
                    *self.regs.entry(a & !0x3000).or_default() ^= v
                }
                _ => {
                    self.regs.insert(a, v);
                }
            }
        }

        fn system_reset(&mut self, kind: ResetKind) {
            self.resets.push(kind);
        }
    }

    fn board() -> Board<FakeBus> {
        let mut bus = FakeBus {
            tx_room: usize::MAX,
            ..Default::default()
        };
        // Everything in reset, as after power-on.
        bus.regs.insert(RESETS_RESET, 0x01FF_FFFF);
        bus.regs.insert(PLL_PWR, 0x2D);
        let mut b = Board::new(bus);
        b.init().unwrap();
        b
    }

    #[test]
    fn baud_divisors_match_the_datasheet_example_and_1_mbaud() {
        // Datasheet 4.2.7.1: 115200 baud from 125 MHz... the pico-sdk formula gives 67 + 52/64.
        assert_eq!(baud_divisors(125_000_000, 115_200), (67, 52));
        // 1 Mbaud from 125 MHz: 7.8125 = 7 + 52/64, exact.
        assert_eq!(baud_divisors(SYS_HZ, BAUD), (7, 52));
    }

    #[test]
    fn init_programs_clocks_uart_and_pins() {
        let b = board();
        let bus = b.bus();
        assert_eq!(
            bus.get(RESETS_RESET) & (RESET_UART0 | RESET_TIMER | RESET_IO_BANK0),
            0
        );
        assert_eq!(bus.get(PLL_FBDIV_INT), 125);
        assert_eq!(bus.get(PLL_PRIM), (6 << 16) | (2 << 12));
        assert_eq!(
            bus.get(PLL_PWR) & (PLL_PWR_PD | PLL_PWR_VCOPD | PLL_PWR_POSTDIVPD),
            0
        );
        assert_eq!(bus.get(CLK_REF_CTRL) & 3, 2);
        assert_eq!(bus.get(CLK_SYS_CTRL) & 0xE1, 1);
        assert_eq!(bus.get(CLK_PERI_CTRL), CLK_PERI_ENABLE);
        assert_eq!(bus.get(WATCHDOG_TICK), WATCHDOG_TICK_ENABLE | 12);
        assert_eq!((bus.get(UART_IBRD), bus.get(UART_FBRD)), (7, 52));
        assert_eq!(bus.get(UART_CR), UART_CR_ENABLE);
        assert_eq!(bus.get(gpio_ctrl(0)), FUNC_UART);
        assert_eq!(bus.get(gpio_ctrl(pins::FRAME_CLOCK)), FUNC_SIO);
        assert_eq!(bus.get(pad(pins::ENCODER_A)) & PAD_PUE, PAD_PUE);
        let oe = bus.get(SIO_GPIO_OE_SET);
        assert_eq!(oe, (0xF << 10) | (1 << 25));
        let inte = bus.get(PROC0_INTE0);
        assert_eq!(inte, (0x8 << 8) | (0xC << 12) | (0xC << 16) | (0xC << 20));
        assert_eq!(bus.get(NVIC_ISER), 1 << 13);
    }

    #[test]
    fn init_reports_a_dead_crystal() {
        struct Dead(FakeBus);
        impl Bus for Dead {
            fn read(&self, a: u32) -> u32 {
                if a == XOSC_STATUS {
                    0
                } else {
                    self.0.read(a)
                }
            }
            fn write(&mut self, a: u32, v: u32) {
                self.0.write(a, v)
            }
            fn system_reset(&mut self, _: ResetKind) {}
        }
        let mut b = Board::new(Dead(FakeBus::default()));
        assert_eq!(b.init(), Err(InitTimeout("XOSC stable")));
    }

    #[test]
    fn hal_drives_outputs_led_and_reads_the_64_bit_timer() {
        let mut b = board();
        b.bus_mut().now_us = (3 << 32) | 7;
        assert_eq!(b.now_us(), (3 << 32) | 7);
        b.write_outputs(0b0101);
        assert_eq!(b.bus().get(SIO_GPIO_OUT) & (0xF << 10), 0b0101 << 10);
        b.write_outputs(0b1010);
        assert_eq!(b.bus().get(SIO_GPIO_OUT) & (0xF << 10), 0b1010 << 10);
        b.set_led(true);
        assert_ne!(b.bus().get(SIO_GPIO_OUT) & (1 << 25), 0);
        b.reset(ResetKind::Bootloader);
        assert_eq!(b.bus().resets, [ResetKind::Bootloader]);
    }

    #[test]
    fn irq_capture_and_service_loop_end_to_end() {
        static EDGES: EdgeQueue<64> = EdgeQueue::new();
        let mut device = Device::new(board());
        // Controller connected (DTR# low), bytes for "activate" and "read WHO_AM_I".
        let mut wire = [0u8; 32];
        let mut n = Message::write(10, crate::harp::Payload::U8(&[0x61]))
            .encode_into(&mut wire)
            .unwrap();
        n += Message::read(0, ElementType::U16)
            .encode_into(&mut wire[n..])
            .unwrap();
        {
            let bus = device.hal_mut().bus_mut();
            bus.regs.insert(SIO_GPIO_IN, 0);
            bus.rx.borrow_mut().extend(&wire[..n]);
        }

        // A frame-clock edge captured by the interrupt 200 µs ago.
        {
            let bus = device.hal_mut().bus_mut();
            bus.now_us = 5_000_000 - 200;
            bus.regs.insert(PROC0_INTS0, EDGE_HIGH << (4 * 2));
            bus.regs.insert(SIO_GPIO_IN, 1 << 2);
            capture_edges(bus, &EDGES);
            assert_eq!(bus.get(INTR0), EDGE_HIGH << 8);
            bus.now_us = 5_000_000;
        }
        Board::service(&mut device, &EDGES);
        assert!(device.hal().bus().rx.borrow().is_empty());

        let sent = device.hal().bus().tx.clone();
        let mut parser: Parser = Parser::new();
        let mut messages = Vec::new();
        parser.push(&sent, |m: MessageView<'_>| {
            messages.push((
                m.message_type(),
                m.address(),
                m.timestamp().unwrap().to_micros(),
            ))
        });
        use crate::harp::MessageType::*;
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[0].0, Write);
        assert_eq!((messages[1].0, messages[1].1), (Read, 0));
        assert_eq!((messages[2].0, messages[2].1), (Event, 32));
        // Stamped with the capture time, not the processing time (truncated to the 32 µs tick).
        let captured = crate::harp::Timestamp::from_micros(5_000_000 - 200).to_micros();
        assert_eq!(messages[2].2, captured);
    }
}
