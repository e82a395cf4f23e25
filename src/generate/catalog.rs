//! The synthetic store's catalogue: category codes with their share of lines and typical
//! price, and the brands sold in each department. Shares follow the published facts about
//! the real log (smartphones first, then refrigerators, TVs and notebooks; samsung, ava,
//! tefal, apple and huawei as the top brands).

/// (category code, share of coded lines in per mille, median price in currency units)
pub const CATEGORIES: &[(&str, f64, f64)] = &[
    ("electronics.smartphone", 177.0, 180.0),
    ("electronics.video.tv", 35.5, 330.0),
    ("electronics.audio.headphone", 30.0, 25.0),
    ("electronics.clocks", 25.0, 60.0),
    ("electronics.tablet", 20.0, 160.0),
    ("electronics.audio.acoustic", 15.0, 45.0),
    ("electronics.camera.photo", 8.0, 300.0),
    ("electronics.telephone", 5.0, 20.0),
    ("electronics.audio.subwoofer", 4.0, 120.0),
    ("electronics.video.projector", 3.0, 250.0),
    ("electronics.audio.microphone", 2.0, 30.0),
    ("appliances.kitchen.refrigerators", 38.3, 480.0),
    ("appliances.kitchen.washer", 30.0, 380.0),
    ("appliances.environment.vacuum", 35.0, 110.0),
    ("appliances.kitchen.kettle", 30.0, 22.0),
    ("appliances.iron", 25.0, 30.0),
    ("appliances.kitchen.microwave", 20.0, 80.0),
    ("appliances.kitchen.blender", 20.0, 35.0),
    ("appliances.environment.air_conditioner", 20.0, 420.0),
    ("appliances.kitchen.mixer", 15.0, 30.0),
    ("appliances.environment.water_heater", 12.0, 130.0),
    ("appliances.personal.hair_cutter", 12.0, 25.0),
    ("appliances.kitchen.oven", 10.0, 260.0),
    ("appliances.kitchen.hood", 10.0, 150.0),
    ("appliances.kitchen.coffee_machine", 10.0, 140.0),
    ("appliances.kitchen.dishwasher", 8.0, 400.0),
    ("appliances.kitchen.meat_grinder", 8.0, 60.0),
    ("appliances.environment.fan", 8.0, 25.0),
    ("appliances.personal.scales", 8.0, 15.0),
    ("appliances.kitchen.toster", 7.0, 25.0),
    ("appliances.kitchen.juicer", 4.0, 50.0),
    ("appliances.sewing_machine", 3.0, 150.0),
    ("computers.notebook", 35.3, 620.0),
    ("computers.peripherals.mouse", 25.0, 9.0),
    ("computers.peripherals.keyboard", 15.0, 14.0),
    ("computers.peripherals.monitor", 15.0, 190.0),
    ("computers.components.videocards", 15.0, 310.0),
    ("computers.peripherals.printer", 12.0, 150.0),
    ("computers.components.memory", 10.0, 40.0),
    ("computers.components.hdd", 10.0, 55.0),
    ("computers.network.router", 10.0, 30.0),
    ("computers.desktop", 8.0, 520.0),
    ("computers.components.cpu", 7.0, 200.0),
    ("computers.peripherals.camera", 5.0, 35.0),
    ("computers.components.motherboard", 5.0, 120.0),
    ("computers.components.power_supply", 4.0, 50.0),
    ("computers.components.cooler", 4.0, 15.0),
    ("furniture.living_room.cabinet", 12.0, 140.0),
    ("furniture.kitchen.table", 10.0, 110.0),
    ("furniture.office.chair", 15.0, 80.0),
    ("furniture.bedroom.bed", 8.0, 260.0),
    ("furniture.living_room.sofa", 8.0, 380.0),
    ("furniture.kitchen.chair", 5.0, 40.0),
    ("furniture.bathroom.toilet", 2.0, 120.0),
    ("stationery.cartrige", 12.0, 18.0),
    ("stationery.paper", 8.0, 5.0),
    ("construction.tools.drill", 4.0, 70.0),
    ("construction.tools.saw", 2.0, 90.0),
    ("construction.components.faucet", 3.0, 45.0),
    ("accessories.bag", 4.0, 20.0),
    ("accessories.umbrella", 3.0, 10.0),
    ("apparel.glove", 3.0, 8.0),
    ("apparel.shoes", 3.0, 40.0),
    ("kids.toys", 3.0, 20.0),
    ("kids.swing", 2.0, 60.0),
    ("auto.accessories.player", 1.5, 40.0),
    ("auto.accessories.videoregister", 1.5, 55.0),
    ("medicine.tools.tonometer", 2.5, 30.0),
    ("sport.bicycle", 1.0, 180.0),
    ("sport.trainer", 1.0, 250.0),
    ("country_yard.lawn_mower", 0.5, 160.0),
];

/// Brands of a department with their share of its products; the rest is the long tail.
pub fn brands_for(code: &str) -> &'static [(&'static str, f64)] {
    let dept = code.split('.').next().unwrap_or("");
    match (dept, code) {
        (_, "electronics.smartphone") => &[
            ("samsung", 0.48),
            ("apple", 0.14),
            ("huawei", 0.12),
            ("xiaomi", 0.09),
            ("oppo", 0.04),
        ],
        ("electronics", _) => &[
            ("samsung", 0.22),
            ("sony", 0.08),
            ("lg", 0.08),
            ("jbl", 0.06),
            ("apple", 0.05),
            ("xiaomi", 0.05),
            ("huawei", 0.03),
        ],
        ("appliances", _) => &[
            ("tefal", 0.16),
            ("samsung", 0.12),
            ("bosch", 0.08),
            ("lg", 0.08),
            ("philips", 0.07),
            ("redmond", 0.05),
            ("polaris", 0.04),
        ],
        ("computers", _) => &[
            ("ava", 0.14),
            ("lenovo", 0.09),
            ("hp", 0.09),
            ("asus", 0.08),
            ("acer", 0.05),
            ("apple", 0.04),
            ("logitech", 0.06),
            ("samsung", 0.04),
        ],
        ("furniture", _) | ("stationery", _) => &[("ava", 0.35), ("brauberg", 0.08)],
        _ => &[("bosch", 0.06), ("makita", 0.06)],
    }
}

/// A pronounceable name for the `i`-th brand of the long tail.
pub fn tail_brand(i: usize) -> String {
    const ON: [&str; 16] = [
        "b", "d", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "gr", "tr",
    ];
    const NU: [&str; 6] = ["a", "e", "i", "o", "u", "ea"];
    const CODA: [&str; 8] = ["", "n", "x", "r", "l", "s", "k", "m"];
    let mut n = i;
    let mut name = String::new();
    for _ in 0..2 {
        name.push_str(ON[n % ON.len()]);
        n /= ON.len();
        name.push_str(NU[n % NU.len()]);
        n /= NU.len();
    }
    name.push_str(CODA[n % CODA.len()]);
    name.push_str(["", "ix", "ona", "tek"][(i / 11) % 4]);
    name
}

/// Share of all lines per month, January to November 2020 (June the largest).
pub const MONTH_LINES: [f64; 11] = [
    70.0, 90.0, 100.0, 130.0, 330.0, 404.0, 370.0, 360.0, 280.0, 300.0, 180.0,
];

/// Share of a month's lines that carry a customer id: the published per-month counts of
/// lines with a user id divided by the month's lines (about 21% over the year).
pub const MONTH_CUSTOMER_LINES: [f64; 11] = [
    0.204, 0.200, 0.187, 0.091, 0.122, 0.102, 0.207, 0.278, 0.252, 0.347, 0.367,
];

/// Mean lines per order: with a customer (published: 1.41) and anonymous (so that all
/// orders average about 1.84 lines).
pub const ITEMS_CUSTOMER: f64 = 1.41;
pub const ITEMS_ANONYMOUS: f64 = 2.0;

/// Relative order volume by UTC hour (the store is at UTC+6).
pub const HOURS: [f64; 24] = [
    6.0, 8.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 8.0, 8.0, 8.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0,
    0.5, 0.5, 0.5, 1.0, 3.0,
];
