//! The real RP2040 bus: volatile memory-mapped I/O and the ROM's USB-bootloader entry.
//!
//! Compiled only for bare-metal ARM (`thumbv6m-none-eabi`). It has not been built on the
//! machine this code was written on, which has neither the target's standard library nor a
//! board; see `firmware/README.md`.

use core::ptr;
use core::sync::atomic::{fence, Ordering};

use crate::board::rp2040::Bus;
use crate::hal::ResetKind;

/// Volatile access to the RP2040 address space. Zero-sized, so the main loop (inside the
/// `Device`) and the GPIO interrupt handler can each have one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mmio;

impl Bus for Mmio {
    #[inline(always)]
    fn read(&self, address: u32) -> u32 {
        // SAFETY: `Board` only passes addresses of RP2040 registers from the datasheet's
        // register maps, which are valid, 4-byte aligned and side-effect-free to read except
        // where the side effect is intended (UARTDR pops the receive FIFO).
        unsafe { ptr::read_volatile(address as usize as *const u32) }
    }

    #[inline(always)]
    fn write(&mut self, address: u32, value: u32) {
        // SAFETY: as for `read`; every address written is a writable register.
        unsafe { ptr::write_volatile(address as usize as *mut u32, value) }
    }

    fn system_reset(&mut self, kind: ResetKind) {
        match kind {
            ResetKind::Reboot => system_reset(),
            ResetKind::Bootloader => reset_to_usb_boot(),
        }
    }
}

/// Cortex-M SCB application interrupt and reset control register.
const SCB_AIRCR: u32 = 0xE000_ED0C;
/// VECTKEY (0x05FA) | SYSRESETREQ.
const AIRCR_SYSRESETREQ: u32 = 0x05FA_0004;

/// Requests a system reset and waits for it.
pub fn system_reset() -> ! {
    // Let outstanding writes (the last UART byte is already out: the device only resets once
    // its queue is empty) complete before the reset request.
    fence(Ordering::SeqCst);
    // SAFETY: AIRCR is the architecturally defined reset request register.
    unsafe { ptr::write_volatile(SCB_AIRCR as usize as *mut u32, AIRCR_SYSRESETREQ) };
    loop {
        core::hint::spin_loop();
    }
}

/// Reboots into the RP2040 ROM's USB mass-storage bootloader (the `BOOTSEL` mode that accepts
/// UF2 files), via the ROM function table (RP2040 datasheet 2.8.3 "Bootrom Contents").
pub fn reset_to_usb_boot() -> ! {
    type TableLookup = unsafe extern "C" fn(table: *const u16, code: u32) -> *const ();
    type ResetUsbBoot = unsafe extern "C" fn(gpio_activity_mask: u32, disable_mask: u32) -> !;

    // SAFETY: 0x14 and 0x18 hold 16-bit pointers to the ROM function table and its lookup
    // helper on every RP2040 (datasheet 2.8.3.1); the looked-up `reset_usb_boot` ("UB") has the
    // signature above. Thumb function addresses in the table already have bit 0 set.
    unsafe {
        let table = usize::from(ptr::read_volatile(0x14 as *const u16)) as *const u16;
        let lookup_address = usize::from(ptr::read_volatile(0x18 as *const u16));
        let lookup: TableLookup = core::mem::transmute::<usize, TableLookup>(lookup_address);
        let code = u32::from(b'U') | (u32::from(b'B') << 8);
        let function = lookup(table, code);
        if !function.is_null() {
            let reset_usb_boot: ResetUsbBoot =
                core::mem::transmute::<*const (), ResetUsbBoot>(function);
            reset_usb_boot(0, 0);
        }
    }
    system_reset()
}
