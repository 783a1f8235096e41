//! UTC calendar arithmetic on the host clock's milliseconds since the Unix epoch (proleptic
//! Gregorian, Howard Hinnant's `civil_from_days` / `days_from_civil`).

const MS_PER_DAY: u64 = 86_400_000;

/// (year, month 1–12, day 1–31) of a day number since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number since 1970-01-01 of (year, month, day).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a time.
pub fn year_month(now_ms: u64) -> (i64, u32) {
    let (y, m, _) = civil_from_days((now_ms / MS_PER_DAY) as i64);
    (y, m)
}

/// The calendar month of a time, `YYYY-MM` (UTC).
pub fn month_key(now_ms: u64) -> String {
    let (y, m) = year_month(now_ms);
    format!("{y:04}-{m:02}")
}

/// The first millisecond of the month after the one `now_ms` is in (UTC).
pub fn next_month_start_ms(now_ms: u64) -> u64 {
    let (y, m) = year_month(now_ms);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) as u64 * MS_PER_DAY
}

/// A time as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T23:59:59.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let (y, mo, d) = civil_from_days((ms / MS_PER_DAY) as i64);
    let in_day = ms % MS_PER_DAY;
    let (h, mi, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z (leap day)
        assert_eq!(rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(month_key(1_709_210_096_789), "2024-02");
        assert_eq!(next_month_start_ms(1_709_210_096_789), 1_709_251_200_000); // 2024-03-01
                                                                               // December rolls over the year: 2025-12-31T23:59:59.999Z -> 2026-01-01.
        assert_eq!(rfc3339(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
        assert_eq!(next_month_start_ms(1_767_225_599_999), 1_767_225_600_000);
        assert_eq!(month_key(1_767_225_600_000), "2026-01");
        for days in [-1000i64, 0, 59, 365, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
