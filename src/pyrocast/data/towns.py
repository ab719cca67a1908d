"""Quebec towns and cities (approximate centres), used to sample `nowildfire` places around settlements.

The seed project drew its extra negative tiles around about 128 cities with a few km of noise: towns, suburbs
and farmland are what the `nowildfire` class of the Kaggle data mostly shows. Coordinates are rounded town
centres (within about a kilometre), which is all that sampling needs.
"""

from __future__ import annotations

from typing import NamedTuple

from pyrocast.settings import Region


class Town(NamedTuple):
    name: str
    lon: float
    lat: float


QUEBEC_TOWNS: tuple[Town, ...] = tuple(
    Town(*t)
    for t in (
        # Montréal region and the south shore
        ("Montréal", -73.567, 45.502),
        ("Laval", -73.712, 45.607),
        ("Longueuil", -73.518, 45.531),
        ("Terrebonne", -73.647, 45.700),
        ("Repentigny", -73.450, 45.742),
        ("Blainville", -73.880, 45.670),
        ("Saint-Jérôme", -74.004, 45.780),
        ("Saint-Eustache", -73.905, 45.565),
        ("Vaudreuil-Dorion", -74.033, 45.400),
        ("Salaberry-de-Valleyfield", -74.132, 45.250),
        ("Châteauguay", -73.750, 45.380),
        ("Saint-Jean-sur-Richelieu", -73.263, 45.307),
        ("Granby", -72.733, 45.400),
        ("Saint-Hyacinthe", -72.957, 45.631),
        ("Sorel-Tracy", -73.117, 46.033),
        ("Joliette", -73.450, 46.017),
        ("Lachute", -74.333, 45.650),
        # Eastern Townships and Centre-du-Québec
        ("Sherbrooke", -71.893, 45.404),
        ("Magog", -72.150, 45.267),
        ("Cowansville", -72.750, 45.200),
        ("Drummondville", -72.484, 45.880),
        ("Victoriaville", -71.967, 46.050),
        ("Plessisville", -71.767, 46.217),
        ("Thetford Mines", -71.300, 46.100),
        ("Lac-Mégantic", -70.883, 45.583),
        # Mauricie and Lanaudière
        ("Trois-Rivières", -72.548, 46.343),
        ("Shawinigan", -72.750, 46.567),
        ("Louiseville", -72.950, 46.250),
        ("La Tuque", -72.783, 47.433),
        ("Saint-Michel-des-Saints", -73.917, 46.683),
        # Québec City, Chaudière-Appalaches, Charlevoix
        ("Québec", -71.208, 46.814),
        ("Lévis", -71.178, 46.803),
        ("Sainte-Marie", -71.017, 46.433),
        ("Saint-Georges", -70.667, 46.117),
        ("Montmagny", -70.550, 46.983),
        ("Donnacona", -71.733, 46.683),
        ("Baie-Saint-Paul", -70.500, 47.433),
        ("La Malbaie", -70.150, 47.650),
        # Outaouais and the Laurentians
        ("Gatineau", -75.701, 45.477),
        ("Buckingham", -75.417, 45.583),
        ("Maniwaki", -75.967, 46.383),
        ("Mont-Laurier", -75.500, 46.550),
        ("Mont-Tremblant", -74.600, 46.117),
        ("Sainte-Agathe-des-Monts", -74.283, 46.050),
        ("Shawville", -76.483, 45.600),
        # Saguenay–Lac-Saint-Jean
        ("Saguenay", -71.069, 48.428),
        ("Alma", -71.650, 48.550),
        ("Roberval", -72.233, 48.517),
        ("Saint-Félicien", -72.450, 48.650),
        ("Dolbeau-Mistassini", -72.233, 48.883),
        # Bas-Saint-Laurent, Gaspésie, Côte-Nord
        ("Rivière-du-Loup", -69.533, 47.833),
        ("Rimouski", -68.524, 48.449),
        ("Matane", -67.533, 48.850),
        ("Gaspé", -64.483, 48.833),
        ("Baie-Comeau", -68.150, 49.217),
        ("Forestville", -69.083, 48.733),
        ("Sept-Îles", -66.383, 50.200),
        # Abitibi-Témiscamingue and Nord-du-Québec
        ("Rouyn-Noranda", -79.023, 48.237),
        ("Val-d'Or", -77.783, 48.098),
        ("Amos", -78.117, 48.567),
        ("La Sarre", -79.200, 48.800),
        ("Senneterre", -77.233, 48.383),
        ("Ville-Marie", -79.433, 47.333),
        ("Chibougamau", -74.367, 49.917),
        ("Lebel-sur-Quévillon", -76.983, 49.050),
    )
)


def towns_in(bounds: Region | None = None) -> list[Town]:
    """The towns inside `bounds` (all of them when None)."""
    return [t for t in QUEBEC_TOWNS if bounds is None or bounds.contains(t.lon, t.lat)]
