//! `docs/harp-registers.md` is the register map people read; `REGISTERS` is the one the firmware
//! runs. This keeps them from drifting apart.

use twinrig_firmware::device::registers::{Access, REGISTERS, WHO_AM_I};

const DOC: &str = include_str!("../../docs/harp-registers.md");

#[test]
fn every_register_has_a_matching_row_in_the_documented_map() {
    for spec in &REGISTERS {
        let ty = if spec.count == 1 {
            format!("{:?}", spec.element).to_uppercase()
        } else {
            format!("{:?}[{}]", spec.element, spec.count).to_uppercase()
        };
        let access = match (spec.access, spec.events) {
            (Access::ReadOnly, false) => "R",
            (Access::ReadOnly, true) => "R/E",
            (Access::ReadWrite, false) => "R/W",
            (Access::ReadWrite, true) => "R/W/E",
        };
        let row = format!(
            "| {} | `{}` | {} | {} |",
            spec.address, spec.name, ty, access
        );
        assert!(
            DOC.lines().any(|l| l.starts_with(&row)),
            "docs/harp-registers.md lacks `{row}`"
        );
    }
}

#[test]
fn documented_rows_all_exist_in_the_firmware() {
    // Register rows: numeric address, `code` name, then a Harp type such as U16 or U8[25].
    let is_type = |c: &str| {
        let c = c.trim();
        let base = c.split('[').next().unwrap_or("");
        [
            "U8", "S8", "U16", "S16", "U32", "S32", "U64", "S64", "FLOAT",
        ]
        .contains(&base)
    };
    let rows = DOC
        .lines()
        .filter(|l| {
            let cells: Vec<&str> = l.split('|').skip(1).collect();
            cells.len() > 3
                && cells[0].trim().parse::<u8>().is_ok()
                && cells[1].trim().starts_with('`')
                && is_type(cells[2])
        })
        .count();
    assert_eq!(rows, REGISTERS.len());
    assert!(DOC.contains(&format!("**{WHO_AM_I}**")));
}
